# Seed data is Russian text, whose Cyrillic letters ruff would flag as look-alikes.
# ruff: noqa: RUF001
"""The data an emulated portal starts with: the default seed, seed files and building the stores.

A seed is a dict (or a JSON/TOML file) with these top-level keys, all optional::

    portal    {"domain": "...", "member_id": "<32 hex>"}
    users     [{"ID": 1, "NAME": ..., "UF_PHONE_INNER": "101", "ACTIVE": true, "ADMIN": true}, ...]
    contacts  [{"ID": 1, "NAME": ..., "PHONE": [{"VALUE": "...", "VALUE_TYPE": "WORK"}], ...}, ...]
    companies, leads, deals   the same, with the fields ``crm.<type>.add`` takes

CRM records may carry ``ID`` and ``DATE_CREATE``; ``ASSIGNED_BY_ID`` defaults to user 1.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from bitrix24_emulator.store.crm import CrmStore
from bitrix24_emulator.store.query import PORTAL_TZ
from bitrix24_emulator.store.users import UserStore

# Seeded records are dated at a fixed moment so runs are reproducible.
SEED_TIME = datetime(2026, 1, 15, 9, 0, tzinfo=PORTAL_TZ).timestamp()

_MEMBER_ID = re.compile(r"^[0-9a-f]{32}$")
_CRM_SECTIONS = {"contacts": "CONTACT", "companies": "COMPANY", "leads": "LEAD", "deals": "DEAL"}
_SECTIONS = frozenset({"portal", "users", *_CRM_SECTIONS})


def _phone(value: str, value_type: str = "WORK") -> dict[str, str]:
    return {"VALUE": value, "VALUE_TYPE": value_type}


DEFAULT_SEED: dict[str, Any] = {
    "portal": {"domain": "example.bitrix24.ru", "member_id": "0f4e8c2a9b7d41e6a3c5d8f1b2e47a90"},
    "users": [
        {
            "ID": 1,
            "NAME": "Иван",
            "LAST_NAME": "Петров",
            "EMAIL": "ivan.petrov@example.ru",
            "UF_PHONE_INNER": "101",
            "WORK_PHONE": "+7 (495) 123-00-01",
            "WORK_POSITION": "Руководитель отдела продаж",
            "UF_DEPARTMENT": [1],
            "ADMIN": True,
        },
        {
            "ID": 2,
            "NAME": "Мария",
            "LAST_NAME": "Иванова",
            "EMAIL": "maria.ivanova@example.ru",
            "UF_PHONE_INNER": "102",
            "PERSONAL_MOBILE": "+7 916 200-00-02",
            "WORK_POSITION": "Менеджер",
            "UF_DEPARTMENT": [2],
        },
        {
            "ID": 3,
            "NAME": "Сергей",
            "LAST_NAME": "Смирнов",
            "EMAIL": "sergey.smirnov@example.ru",
            "UF_PHONE_INNER": "103",
            "WORK_POSITION": "Менеджер",
            "UF_DEPARTMENT": [2],
        },
        {
            # Fired: keeps an internal number, so lookups by it must check ACTIVE.
            "ID": 4,
            "NAME": "Ольга",
            "LAST_NAME": "Кузнецова",
            "EMAIL": "olga.kuznetsova@example.ru",
            "UF_PHONE_INNER": "104",
            "WORK_POSITION": "Менеджер",
            "UF_DEPARTMENT": [2],
            "ACTIVE": False,
        },
        {
            # No internal number: reachable only on a mobile.
            "ID": 5,
            "NAME": "Дмитрий",
            "LAST_NAME": "Попов",
            "EMAIL": "dmitry.popov@example.ru",
            "PERSONAL_MOBILE": "+79161234567",
            "WORK_POSITION": "Выездной менеджер",
            "UF_DEPARTMENT": [3],
        },
    ],
    "contacts": [
        {
            "ID": 1,
            "NAME": "Анна",
            "LAST_NAME": "Соколова",
            "PHONE": [_phone("+7 (495) 123-45-67"), _phone("8 916 555-12-34", "MOBILE")],
            "EMAIL": [{"VALUE": "anna.sokolova@client.ru", "VALUE_TYPE": "WORK"}],
            "COMPANY_ID": 1,
            "ASSIGNED_BY_ID": 2,
        },
        {
            "ID": 2,
            "NAME": "Борис",
            "LAST_NAME": "Волков",
            "PHONE": [_phone("+79031112233", "MOBILE")],
            "ASSIGNED_BY_ID": 3,
        },
        {
            "ID": 3,
            "NAME": "Елена",
            "LAST_NAME": "Морозова",
            "PHONE": [_phone("8 (812) 765-43-21")],
            "ASSIGNED_BY_ID": 2,
        },
        {
            "ID": 4,
            "NAME": "Павел",
            "LAST_NAME": "Новиков",
            "EMAIL": [{"VALUE": "p.novikov@mail.example", "VALUE_TYPE": "HOME"}],
            "ASSIGNED_BY_ID": 1,
        },
        {
            # Shares a number with company 2 and lead 2: the contact must win.
            "ID": 5,
            "NAME": "Алексей",
            "LAST_NAME": "Фёдоров",
            "PHONE": [_phone("+74951002030")],
            "COMPANY_ID": 2,
            "ASSIGNED_BY_ID": 3,
        },
    ],
    "companies": [
        {
            "ID": 1,
            "TITLE": "ООО «Ромашка»",
            "PHONE": [_phone("+7 (495) 987-65-43")],
            "EMAIL": [{"VALUE": "info@romashka.example", "VALUE_TYPE": "WORK"}],
            "ASSIGNED_BY_ID": 2,
        },
        {
            "ID": 2,
            "TITLE": "АО «Вектор»",
            "PHONE": [_phone("8 495 100 20 30"), _phone("+7-495-100-20-31", "FAX")],
            "ASSIGNED_BY_ID": 3,
        },
        {
            # Shares a number only with lead 3: the company must win over the lead.
            "ID": 3,
            "TITLE": "ИП Белов",
            "PHONE": [_phone("+7 (343) 222-33-44")],
            "ASSIGNED_BY_ID": 1,
        },
    ],
    "leads": [
        {
            "ID": 1,
            "TITLE": "Заявка с сайта",
            "NAME": "Григорий",
            "PHONE": [_phone("+7 926 000-11-22", "MOBILE")],
            "SOURCE_ID": "WEB",
            "ASSIGNED_BY_ID": 2,
        },
        {
            "ID": 2,
            "TITLE": "Повторный звонок",
            "PHONE": [_phone("7-495-100-20-30")],
            "SOURCE_ID": "CALL",
            "ASSIGNED_BY_ID": 3,
        },
        {
            "ID": 3,
            "TITLE": "Входящий звонок",
            "PHONE": [_phone("83432223344")],
            "SOURCE_ID": "CALL",
            "ASSIGNED_BY_ID": 1,
        },
        {
            "ID": 4,
            "TITLE": "Звонок в офис",
            "PHONE": [_phone("+7 (495) 555-00-00 доб. 123")],
            "SOURCE_ID": "CALL",
            "STATUS_ID": "IN_PROCESS",
            "ASSIGNED_BY_ID": 2,
        },
    ],
    "deals": [
        {
            "ID": 1,
            "TITLE": "Поставка оборудования",
            "CONTACT_ID": 1,
            "COMPANY_ID": 1,
            "OPPORTUNITY": 150000,
            "ASSIGNED_BY_ID": 2,
        },
    ],
}


def load_seed_file(path: str) -> dict[str, Any]:
    """Read and check a JSON or TOML seed file; a ``ValueError`` names the file and the problem."""
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise ValueError(f"seed file {path}: unsupported extension {suffix!r} (use .json or .toml)")
    try:
        if suffix == ".json":
            data: Any = json.loads(file.read_text(encoding="utf-8"))
        else:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as err:
        raise ValueError(f"seed file {path}: cannot read it ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"seed file {path}: not UTF-8 text ({err.reason})") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"seed file {path}: invalid JSON at line {err.lineno}: {err.msg}") from err
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"seed file {path}: invalid TOML: {err}") from err
    try:
        validate_seed(data)
    except ValueError as err:
        raise ValueError(f"seed file {path}: {err}") from err
    return dict(data)


def validate_seed(seed: Any) -> None:
    """Raise ``ValueError`` describing the first thing wrong with a seed."""
    if not isinstance(seed, Mapping):
        raise ValueError(f"the top level must be an object, got {type(seed).__name__}")
    unknown = sorted(set(seed) - _SECTIONS)
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}; expected some of {sorted(_SECTIONS)}")
    portal = seed.get("portal", {})
    if not isinstance(portal, Mapping):
        raise ValueError("'portal' must be an object")
    domain = portal.get("domain", "example.bitrix24.ru")
    if not isinstance(domain, str) or not domain or "/" in domain:
        raise ValueError(f"portal.domain must be a host name, got {domain!r}")
    member_id = portal.get("member_id", DEFAULT_SEED["portal"]["member_id"])
    if not isinstance(member_id, str) or not _MEMBER_ID.match(member_id):
        raise ValueError(f"portal.member_id must be 32 lower-case hex digits, got {member_id!r}")
    for section in ("users", *_CRM_SECTIONS):
        records = seed.get(section, [])
        if not isinstance(records, list):
            raise ValueError(f"'{section}' must be a list of objects")
        seen: set[int] = set()
        for index, record in enumerate(records):
            where = f"{section}[{index}]"
            if not isinstance(record, Mapping):
                raise ValueError(f"{where} must be an object, got {type(record).__name__}")
            raw_id = record.get("ID")
            if section == "users" and raw_id is None:
                raise ValueError(f"{where} has no ID")
            if raw_id is None:
                continue
            try:
                record_id = int(raw_id)
            except (TypeError, ValueError):
                raise ValueError(f"{where}.ID must be an integer, got {raw_id!r}") from None
            if record_id <= 0:
                raise ValueError(f"{where}.ID must be positive, got {record_id}")
            if record_id in seen:
                raise ValueError(f"{where}.ID {record_id} is used twice")
            seen.add(record_id)
            if section == "users" and record.get("UF_PHONE_INNER") is not None:
                inner = record["UF_PHONE_INNER"]
                if not isinstance(inner, str | int):
                    raise ValueError(f"{where}.UF_PHONE_INNER must be a string, got {inner!r}")


def portal_identity(seed: Mapping[str, Any]) -> tuple[str, str]:
    """The seed's (domain, member_id), with the default portal's values for missing ones."""
    portal = seed.get("portal", {})
    default = DEFAULT_SEED["portal"]
    return (
        str(portal.get("domain", default["domain"])),
        str(portal.get("member_id", default["member_id"])),
    )


def build_stores(
    seed: Mapping[str, Any], *, phone_country: str | None = "RU"
) -> tuple[UserStore, CrmStore]:
    """Fresh user and CRM stores filled from a seed (checked first)."""
    validate_seed(seed)
    users = UserStore(seed.get("users", []))
    crm = CrmStore(phone_country=phone_country)
    for section, entity_type in _CRM_SECTIONS.items():
        for index, record in enumerate(seed.get(section, [])):
            fields = {str(k).upper(): v for k, v in record.items()}
            raw_id = fields.pop("ID", None)
            try:
                crm.add(
                    entity_type,
                    fields,
                    now=SEED_TIME,
                    user_id=int(fields.get("ASSIGNED_BY_ID") or 1),
                    entity_id=int(raw_id) if raw_id is not None else None,
                )
            except ValueError as err:
                raise ValueError(f"{section}[{index}]: {err}") from err
    return users, crm
