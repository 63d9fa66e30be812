"""The portal's CRM: contacts, companies, leads, deals and call activities (spec §6.1 to §6.5).

Records are kept wire-shaped, as ``crm.*.get`` returns them: IDs and numbers are strings, flags
are ``"Y"``/``"N"``, datetimes ISO-8601 with the portal's offset. Multifields (``PHONE``,
``EMAIL``, ``WEB``, ``IM``, ``LINK``) are kept apart, because list methods return them only when
selected by name (§9 fact 9).

Phone matching comes in two strengths, as in Bitrix24: list filters on ``PHONE`` compare the
stored value exactly (§6.2), while duplicate search (``crm.duplicate.findbycomm``, the
telephony lookup behind ``register``/``searchCrmEntities``) compares normalised numbers and
ignores extensions (§6.4). How Bitrix24 normalises is UNCONFIRMED; we keep the digits and, for
``phone_country="RU"`` (the default), read a leading trunk ``8`` of an 11-digit number and a bare
10-digit number as ``+7``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bitrix24_emulator.store.query import (
    FieldTypes,
    Page,
    filter_records,
    iso,
    paginate,
    sort_records,
    split_key,
)

EntityType = Literal["CONTACT", "COMPANY", "LEAD", "DEAL"]
ENTITY_TYPES: tuple[EntityType, ...] = ("CONTACT", "COMPANY", "LEAD", "DEAL")
# CRM owner type ids (crm.enum.ownertype): 1 lead, 2 deal, 3 contact, 4 company.
OWNER_TYPE_IDS: dict[str, int] = {"LEAD": 1, "DEAL": 2, "CONTACT": 3, "COMPANY": 4}
MULTIFIELDS = ("PHONE", "EMAIL", "WEB", "IM", "LINK")
# The order Bitrix24 ranks a phone's owners in when it links a call.
PHONE_PRIORITY: tuple[EntityType, ...] = ("CONTACT", "COMPANY", "LEAD")
ACTIVITY_TYPE_CALL = 2

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_EXTENSION = re.compile(r"(доб|ext|x|#|,|;|p|w).*$", re.IGNORECASE)
_NON_DIGITS = re.compile(r"\D")
_UTM = ("UTM_SOURCE", "UTM_MEDIUM", "UTM_CAMPAIGN", "UTM_CONTENT", "UTM_TERM")
_ORIGIN = ("ORIGINATOR_ID", "ORIGIN_ID", "ORIGIN_VERSION")
_SYSTEM = (
    "ASSIGNED_BY_ID",
    "CREATED_BY_ID",
    "MODIFY_BY_ID",
    "DATE_CREATE",
    "DATE_MODIFY",
)
_MONEY = frozenset({"OPPORTUNITY", "TAX_VALUE", "REVENUE"})


class CrmValidationError(ValueError):
    """A field value the CRM refuses (the methods answer it as ``ERROR_CORE``)."""


@dataclass(frozen=True)
class _Schema:
    """The fields of one record kind, in output order, with defaults for ``add``."""

    fields: tuple[str, ...]
    defaults: Mapping[str, str | None]
    types: FieldTypes
    readonly: frozenset[str]
    multifields: tuple[str, ...] = ()
    explicit_only: tuple[str, ...] = ()  # selectable by name only (not by "*")


def _schema(
    fields: Sequence[str],
    defaults: Mapping[str, str | None],
    *,
    numeric: Iterable[str] = (),
    dates: Iterable[str] = (),
    multifields: tuple[str, ...] = MULTIFIELDS,
    explicit_only: tuple[str, ...] = (),
) -> _Schema:
    all_fields = ("ID", *fields, *_SYSTEM, *_ORIGIN, *_UTM)
    base_numeric = {"ID", "ASSIGNED_BY_ID", "CREATED_BY_ID", "MODIFY_BY_ID"}
    return _Schema(
        fields=tuple(dict.fromkeys(all_fields)),
        defaults=defaults,
        types=FieldTypes(
            numeric=frozenset({*base_numeric, *numeric}),
            dates=frozenset({"DATE_CREATE", "DATE_MODIFY", *dates}),
        ),
        readonly=frozenset(
            {
                "ID",
                "CREATED_BY_ID",
                "MODIFY_BY_ID",
                "DATE_CREATE",
                "DATE_MODIFY",
                "HAS_PHONE",
                "HAS_EMAIL",
                "HAS_IMOL",
                "STATUS_SEMANTIC_ID",
                "STAGE_SEMANTIC_ID",
            }
        ),
        multifields=multifields,
        explicit_only=explicit_only or multifields,
    )


_SCHEMAS: dict[str, _Schema] = {
    "CONTACT": _schema(
        (
            "HONORIFIC",
            "NAME",
            "SECOND_NAME",
            "LAST_NAME",
            "PHOTO",
            "BIRTHDATE",
            "TYPE_ID",
            "SOURCE_ID",
            "SOURCE_DESCRIPTION",
            "POST",
            "ADDRESS",
            "COMMENTS",
            "OPENED",
            "EXPORT",
            "HAS_PHONE",
            "HAS_EMAIL",
            "HAS_IMOL",
            "COMPANY_ID",
            "LEAD_ID",
        ),
        {"TYPE_ID": "CLIENT", "OPENED": "Y", "EXPORT": "Y", "BIRTHDATE": ""},
        numeric=("COMPANY_ID", "LEAD_ID"),
    ),
    "COMPANY": _schema(
        (
            "TITLE",
            "COMPANY_TYPE",
            "LOGO",
            "ADDRESS",
            "ADDRESS_LEGAL",
            "BANKING_DETAILS",
            "INDUSTRY",
            "EMPLOYEES",
            "CURRENCY_ID",
            "REVENUE",
            "OPENED",
            "COMMENTS",
            "HAS_PHONE",
            "HAS_EMAIL",
            "HAS_IMOL",
            "IS_MY_COMPANY",
            "LEAD_ID",
        ),
        {
            "COMPANY_TYPE": "CUSTOMER",
            "CURRENCY_ID": "RUB",
            "REVENUE": "0.00",
            "OPENED": "Y",
            "IS_MY_COMPANY": "N",
        },
        numeric=("REVENUE", "LEAD_ID"),
    ),
    "LEAD": _schema(
        (
            "TITLE",
            "HONORIFIC",
            "NAME",
            "SECOND_NAME",
            "LAST_NAME",
            "COMPANY_TITLE",
            "COMPANY_ID",
            "CONTACT_ID",
            "IS_RETURN_CUSTOMER",
            "BIRTHDATE",
            "SOURCE_ID",
            "SOURCE_DESCRIPTION",
            "STATUS_ID",
            "STATUS_DESCRIPTION",
            "POST",
            "COMMENTS",
            "CURRENCY_ID",
            "OPPORTUNITY",
            "IS_MANUAL_OPPORTUNITY",
            "HAS_PHONE",
            "HAS_EMAIL",
            "HAS_IMOL",
            "DATE_CLOSED",
            "STATUS_SEMANTIC_ID",
            "OPENED",
            "ADDRESS",
        ),
        {
            "STATUS_ID": "NEW",
            "IS_RETURN_CUSTOMER": "N",
            "CURRENCY_ID": "RUB",
            "OPPORTUNITY": "0.00",
            "IS_MANUAL_OPPORTUNITY": "N",
            "OPENED": "Y",
            "BIRTHDATE": "",
            "DATE_CLOSED": "",
        },
        numeric=("COMPANY_ID", "CONTACT_ID", "OPPORTUNITY"),
        dates=("DATE_CLOSED",),
    ),
    "DEAL": _schema(
        (
            "TITLE",
            "TYPE_ID",
            "CATEGORY_ID",
            "STAGE_ID",
            "STAGE_SEMANTIC_ID",
            "IS_NEW",
            "IS_RECURRING",
            "IS_RETURN_CUSTOMER",
            "PROBABILITY",
            "CURRENCY_ID",
            "OPPORTUNITY",
            "IS_MANUAL_OPPORTUNITY",
            "TAX_VALUE",
            "COMPANY_ID",
            "CONTACT_ID",
            "QUOTE_ID",
            "BEGINDATE",
            "CLOSEDATE",
            "OPENED",
            "CLOSED",
            "COMMENTS",
            "LEAD_ID",
            "ADDITIONAL_INFO",
            "SOURCE_ID",
            "SOURCE_DESCRIPTION",
        ),
        {
            "TYPE_ID": "SALE",
            "CATEGORY_ID": "0",
            "STAGE_ID": "NEW",
            "IS_NEW": "Y",
            "IS_RECURRING": "N",
            "IS_RETURN_CUSTOMER": "N",
            "CURRENCY_ID": "RUB",
            "OPPORTUNITY": "0.00",
            "IS_MANUAL_OPPORTUNITY": "N",
            "TAX_VALUE": "0.00",
            "OPENED": "Y",
            "CLOSED": "N",
        },
        numeric=(
            "CATEGORY_ID",
            "PROBABILITY",
            "OPPORTUNITY",
            "TAX_VALUE",
            "COMPANY_ID",
            "CONTACT_ID",
            "QUOTE_ID",
            "LEAD_ID",
        ),
        dates=("BEGINDATE", "CLOSEDATE"),
        multifields=(),
    ),
}

_ACTIVITY_FIELDS = (
    "ID",
    "TYPE_ID",
    "PROVIDER_ID",
    "PROVIDER_TYPE_ID",
    "PROVIDER_GROUP_ID",
    "ASSOCIATED_ENTITY_ID",
    "SUBJECT",
    "CREATED",
    "LAST_UPDATED",
    "START_TIME",
    "END_TIME",
    "DEADLINE",
    "COMPLETED",
    "STATUS",
    "RESPONSIBLE_ID",
    "PRIORITY",
    "NOTIFY_TYPE",
    "NOTIFY_VALUE",
    "DESCRIPTION",
    "DESCRIPTION_TYPE",
    "DIRECTION",
    "LOCATION",
    "SETTINGS",
    "ORIGINATOR_ID",
    "ORIGIN_ID",
    "AUTHOR_ID",
    "EDITOR_ID",
    "OWNER_ID",
    "OWNER_TYPE_ID",
    "STORAGE_TYPE_ID",
    "STORAGE_ELEMENT_IDS",
)
_ACTIVITY_TYPES = FieldTypes(
    numeric=frozenset(
        {
            "ID",
            "TYPE_ID",
            "ASSOCIATED_ENTITY_ID",
            "STATUS",
            "RESPONSIBLE_ID",
            "PRIORITY",
            "NOTIFY_TYPE",
            "NOTIFY_VALUE",
            "DESCRIPTION_TYPE",
            "DIRECTION",
            "AUTHOR_ID",
            "EDITOR_ID",
            "OWNER_ID",
            "OWNER_TYPE_ID",
            "STORAGE_TYPE_ID",
        }
    ),
    dates=frozenset({"CREATED", "LAST_UPDATED", "START_TIME", "END_TIME", "DEADLINE"}),
)
ACTIVITY_FIELDS = frozenset({*_ACTIVITY_FIELDS, "COMMUNICATIONS"})


def phone_key(value: str, country: str | None = "RU") -> str:
    """The normalised form duplicate search compares: digits only, extension dropped."""
    digits = _NON_DIGITS.sub("", _EXTENSION.sub("", str(value)))
    if country == "RU":
        if len(digits) == 11 and digits.startswith("8"):
            digits = "7" + digits[1:]
        elif len(digits) == 10:
            digits = "7" + digits
    return digits


def _wire(name: str, value: Any) -> Any:
    """A written value in the shape reads give it back: strings, "Y"/"N", copies of lists."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "Y" if value else "N"
    if isinstance(value, int | float) and name in _MONEY:
        return f"{float(value):.2f}"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | dict):
        return copy.deepcopy(value)
    return str(value)


def multifield_items(raw: Any) -> list[dict[str, Any]]:
    """Multifield items as a list of dicts, whatever the encoding gave (list, indexed dict, str)."""
    if raw is None or raw == "":
        return []
    if isinstance(raw, Mapping):
        # Form encoding gives {"0": {...}, "1": {...}}; old clients send {"n0": {...}}.
        if "VALUE" in raw or "ID" in raw:
            raw = [raw]
        else:
            raw = list(raw.values())
    elif not isinstance(raw, list):
        raw = [{"VALUE": raw}]
    items: list[dict[str, Any]] = []
    for item in raw:
        if isinstance(item, Mapping):
            items.append({str(k).upper(): v for k, v in item.items()})
        elif item not in (None, ""):
            items.append({"VALUE": item})
    return items


def _lead_semantic(status: str | None) -> str:
    return {"CONVERTED": "S", "JUNK": "F"}.get(status or "", "P")


def _deal_semantic(stage: str | None) -> str:
    stage = stage or ""
    if stage.endswith("WON"):
        return "S"
    if stage.endswith("LOSE") or stage.endswith("APOLOGY"):
        return "F"
    return "P"


@dataclass
class _Table:
    """Records of one kind plus their multi-valued fields."""

    schema: _Schema
    records: dict[int, dict[str, Any]] = field(default_factory=dict)
    multi: dict[int, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    next_id: int = 1

    def known(self, name: str) -> bool:
        return (
            name in self.schema.fields
            or name in self.schema.explicit_only
            or (name.startswith("UF_") and "*" not in name)
        )

    def value_of(self, record: Mapping[str, Any], name: str) -> Any:
        if name in self.schema.explicit_only:
            values = self.multi.get(int(record["ID"]), {}).get(name, [])
            return [v.get("VALUE") for v in values]
        return record.get(name)

    def render(self, entity_id: int, select: Sequence[str] | None) -> dict[str, Any]:
        """One record as a read returns it: ``None`` select = everything (``get``)."""
        record = self.records[entity_id]
        multi = self.multi.get(entity_id, {})
        if select is None:
            out = copy.deepcopy(record)
            for name in self.schema.explicit_only:
                if multi.get(name):
                    out[name] = copy.deepcopy(multi[name])
            return out
        wanted = [s.strip().upper() for s in select if str(s).strip()]
        if not wanted:
            wanted = ["*", "UF_*"]
        star, uf_star = "*" in wanted, "UF_*" in wanted
        out = {}
        for name, value in record.items():
            is_uf = name.startswith("UF_")
            if name == "ID" or (star and not is_uf) or (uf_star and is_uf) or name in wanted:
                out[name] = copy.deepcopy(value)
        for name in self.schema.explicit_only:
            # Multifields only when named; an entity without values has no key at all.
            if name in wanted and multi.get(name):
                out[name] = copy.deepcopy(multi[name])
        return out

    def _exact_multifields(self, conditions: Mapping[str, Any]) -> dict[str, Any]:
        """Multifields filter by exact value only (§6.2): LIKE operators on them mean equality."""
        out: dict[str, Any] = {}
        for key, wanted in conditions.items():
            op, name = split_key(str(key))
            if name.upper() in self.schema.multifields and op in ("%", "=%", "%=", "?"):
                key = name
            out[key] = wanted
        return out

    def query(
        self,
        conditions: Mapping[str, Any],
        order: Sequence[tuple[str, bool]],
        select: Sequence[str],
        start: Any,
    ) -> Page:
        rows = filter_records(
            self.records.values(),
            self._exact_multifields(conditions),
            self.schema.types,
            known=self.known,
            value_of=self.value_of,
        )
        rows = sort_records(
            rows, order or [("ID", False)], self.schema.types, value_of=self.value_of
        )
        ids = [int(r["ID"]) for r in rows]
        page = paginate([{"ID": i} for i in ids], start)
        items = [self.render(int(item["ID"]), select) for item in page.items]
        return Page(items, page.total, page.next)


class CrmStore:
    """The CRM of one portal."""

    def __init__(self, *, phone_country: str | None = "RU") -> None:
        self.phone_country = phone_country
        self._tables: dict[str, _Table] = {t: _Table(_SCHEMAS[t]) for t in ENTITY_TYPES}
        self._activities = _Table(
            _Schema(
                fields=_ACTIVITY_FIELDS,
                defaults={},
                types=_ACTIVITY_TYPES,
                readonly=frozenset(),
                multifields=(),
                explicit_only=("COMMUNICATIONS",),
            )
        )
        self._next_multifield_id = 1
        self._phone_index: dict[str, set[tuple[str, int]]] = {}
        self._phone_keys: dict[tuple[str, int], set[str]] = {}  # the index entries of each owner

    # --- generic entity access -------------------------------------------------------------

    def _table(self, entity_type: str) -> _Table:
        try:
            return self._tables[entity_type.upper()]
        except KeyError:
            raise ValueError(f"unknown CRM entity type {entity_type!r}") from None

    def add(
        self,
        entity_type: str,
        fields: Mapping[str, Any],
        *,
        now: float,
        user_id: int,
        entity_id: int | None = None,
    ) -> int:
        """Create an entity from writable ``fields`` (unknown ones ignored) and return its id.

        ``entity_id`` and the ``DATE_CREATE`` field are honoured only for seeding.
        """
        table = self._table(entity_type)
        etype = entity_type.upper()
        fields = {str(k).upper(): v for k, v in fields.items()}
        new_id = entity_id if entity_id is not None else table.next_id
        if new_id in table.records:
            raise ValueError(f"{etype} {new_id} already exists")
        multi = {
            name: self._new_values(name, multifield_items(fields.get(name)))
            for name in table.schema.multifields
        }
        stamp = iso(now)
        record: dict[str, Any] = dict.fromkeys(table.schema.fields)
        record.update(table.schema.defaults)
        record.update(
            {
                "ID": str(new_id),
                "ASSIGNED_BY_ID": str(user_id),
                "CREATED_BY_ID": str(user_id),
                "MODIFY_BY_ID": str(user_id),
                "DATE_CREATE": str(fields.get("DATE_CREATE") or stamp),
                "DATE_MODIFY": str(fields.get("DATE_CREATE") or stamp),
            }
        )
        self._write_scalars(table, record, fields)
        if etype == "LEAD" and not record.get("TITLE"):
            # Bitrix24 names an untitled lead "Лид #<id>" (UNCONFIRMED; stated only for deals).
            record["TITLE"] = f"Лид #{new_id}"
        if etype == "DEAL":
            if not record.get("TITLE"):
                record["TITLE"] = f"Сделка #{new_id}"
            record["BEGINDATE"] = record.get("BEGINDATE") or stamp
            record["CLOSEDATE"] = record.get("CLOSEDATE") or iso(now + 7 * 86400)
        table.records[new_id] = record
        table.multi[new_id] = multi
        table.next_id = max(table.next_id, new_id + 1)
        self._after_write(etype, new_id)
        return new_id

    def update(
        self,
        entity_type: str,
        entity_id: int,
        fields: Mapping[str, Any],
        *,
        now: float,
        user_id: int,
    ) -> bool:
        """Change the given fields; multifields follow §6.1. False when there is no such entity."""
        table = self._table(entity_type)
        record = table.records.get(entity_id)
        if record is None:
            return False
        fields = {str(k).upper(): v for k, v in fields.items()}
        multi = table.multi[entity_id]
        for name in table.schema.multifields:
            if name in fields:
                multi[name] = self._merge_values(name, multi[name], multifield_items(fields[name]))
        self._write_scalars(table, record, fields)
        record["MODIFY_BY_ID"] = str(user_id)
        record["DATE_MODIFY"] = iso(now)
        self._after_write(entity_type.upper(), entity_id)
        return True

    def entity(self, entity_type: str, entity_id: int) -> dict[str, Any] | None:
        """The entity as ``crm.<type>.get`` returns it (multifields included), or None."""
        table = self._tables.get(entity_type.upper())
        if table is None or entity_id not in table.records:
            return None
        return table.render(entity_id, None)

    def exists(self, entity_type: str, entity_id: int) -> bool:
        """Whether the entity exists."""
        table = self._tables.get(entity_type.upper())
        return table is not None and entity_id in table.records

    def display_name(self, entity_type: str, entity_id: int) -> str:
        """How the CRM titles the entity: a company's or lead's title, a contact's full name."""
        record = self.entity(entity_type, entity_id)
        if record is None:
            return ""
        if entity_type.upper() == "CONTACT":
            parts = (record.get("NAME"), record.get("SECOND_NAME"), record.get("LAST_NAME"))
            return " ".join(p for p in parts if p)
        return str(record.get("TITLE") or "")

    def query(
        self,
        entity_type: str,
        *,
        conditions: Mapping[str, Any],
        order: Sequence[tuple[str, bool]] = (),
        select: Sequence[str] = (),
        start: Any = 0,
    ) -> Page:
        """One page of a list method: filter, order, select and ``start`` as §4.5/§6.2 describe."""
        return self._table(entity_type).query(conditions, order, select, start)

    def count(self, entity_type: str) -> int:
        """How many entities of a type there are."""
        return len(self._table(entity_type).records)

    # --- phone and e-mail lookups --------------------------------------------------------

    def find_by_phone(self, phone: str) -> list[tuple[str, int]]:
        """Entities with this phone, normalised: contacts, then companies, then leads, by id."""
        key = phone_key(phone, self.phone_country)
        if not key:
            return []
        found = self._phone_index.get(key, set())
        return [
            (etype, entity_id)
            for etype in PHONE_PRIORITY
            for entity_id in sorted(i for t, i in found if t == etype)
        ]

    def find_by_email(self, email: str) -> list[tuple[str, int]]:
        """Entities with this e-mail (case-insensitive), in the same priority as phones."""
        wanted = str(email).strip().lower()
        if not wanted:
            return []
        found: list[tuple[str, int]] = []
        for etype in PHONE_PRIORITY:
            table = self._tables[etype]
            for entity_id in sorted(table.records):
                values = table.multi[entity_id].get("EMAIL", [])
                if any(str(v["VALUE"]).strip().lower() == wanted for v in values):
                    found.append((etype, entity_id))
        return found

    # --- telephony side effects ----------------------------------------------------------

    def add_lead(self, fields: dict[str, Any], now: float) -> int:
        """Create a lead (as ``CRM_CREATE`` does); ``ASSIGNED_BY_ID`` defaults to user 1."""
        upper = {str(k).upper(): v for k, v in fields.items()}
        user_id = int(upper.get("ASSIGNED_BY_ID") or 1)
        return self.add("LEAD", upper, now=now, user_id=user_id)

    def add_call_activity(
        self,
        *,
        owner_type: str,
        owner_id: int,
        call_id: str,
        user_id: int,
        phone: str,
        incoming: bool,
        duration: int,
        status_code: str,
        start: float,
        now: float,
    ) -> int:
        """Record the call activity ``telephony.externalCall.finish`` creates; return its id."""
        table = self._activities
        activity_id = table.next_id
        table.next_id += 1
        owner_type_id = OWNER_TYPE_IDS[owner_type.upper()]
        # A missed inbound call stays an open to-do so someone calls back (UNCONFIRMED detail).
        missed = incoming and status_code != "200"
        end = start + max(duration, 0)
        table.records[activity_id] = {
            "ID": str(activity_id),
            "TYPE_ID": str(ACTIVITY_TYPE_CALL),
            "PROVIDER_ID": "VOXIMPLANT_CALL",
            "PROVIDER_TYPE_ID": "CALL",
            "PROVIDER_GROUP_ID": None,
            "ASSOCIATED_ENTITY_ID": "0",
            "SUBJECT": f"{'Входящий' if incoming else 'Исходящий'} звонок {phone}",
            "CREATED": iso(now),
            "LAST_UPDATED": iso(now),
            "START_TIME": iso(start),
            "END_TIME": iso(end),
            "DEADLINE": iso(end),
            "COMPLETED": "N" if missed else "Y",
            "STATUS": "1" if missed else "2",
            "RESPONSIBLE_ID": str(user_id),
            "PRIORITY": "2",
            "NOTIFY_TYPE": "0",
            "NOTIFY_VALUE": "0",
            "DESCRIPTION": "",
            "DESCRIPTION_TYPE": "1",
            "DIRECTION": "1" if incoming else "2",
            "LOCATION": "",
            "SETTINGS": [],
            "ORIGINATOR_ID": None,
            "ORIGIN_ID": f"VI_{call_id}",
            "AUTHOR_ID": str(user_id),
            "EDITOR_ID": str(user_id),
            "OWNER_ID": str(owner_id),
            "OWNER_TYPE_ID": str(owner_type_id),
            "STORAGE_TYPE_ID": "3",
            "STORAGE_ELEMENT_IDS": [],
        }
        table.multi[activity_id] = {
            "COMMUNICATIONS": [
                {
                    "ID": str(activity_id),
                    "TYPE": "PHONE",
                    "VALUE": phone,
                    "ENTITY_ID": str(owner_id),
                    "ENTITY_TYPE_ID": str(owner_type_id),
                }
            ]
        }
        return activity_id

    def attach_activity_record(self, activity_id: int, file_id: int) -> None:
        """Attach a call recording to an activity; a second one replaces the first (§1.4)."""
        record = self._activities.records.get(activity_id)
        if record is None:
            raise KeyError(f"no activity {activity_id}")
        record["STORAGE_ELEMENT_IDS"] = [int(file_id)]

    def activity(self, activity_id: int) -> dict[str, Any] | None:
        """One activity with its communications, or None."""
        if activity_id not in self._activities.records:
            return None
        return self._activities.render(activity_id, None)

    def activities(self) -> list[dict[str, Any]]:
        """Every activity with its communications, by id."""
        return [self._activities.render(i, None) for i in sorted(self._activities.records)]

    def query_activities(
        self,
        *,
        conditions: Mapping[str, Any],
        order: Sequence[tuple[str, bool]] = (),
        select: Sequence[str] = (),
        start: Any = 0,
    ) -> Page:
        """One page of ``crm.activity.list``."""
        return self._activities.query(conditions, order, select, start)

    # --- internals -----------------------------------------------------------------------

    def _write_scalars(
        self, table: _Table, record: dict[str, Any], fields: Mapping[str, Any]
    ) -> None:
        schema = table.schema
        for name, value in fields.items():
            if name in schema.readonly or name in schema.explicit_only:
                continue
            if name in schema.fields or name.startswith("UF_"):
                record[name] = _wire(name, value)
        if "COMPANY_IDS" in fields and "COMPANY_ID" in schema.fields and "COMPANY_ID" not in fields:
            ids = multifield_values(fields["COMPANY_IDS"])
            record["COMPANY_ID"] = str(ids[0]) if ids else None
        if "CONTACT_IDS" in fields and "CONTACT_ID" in schema.fields and "CONTACT_ID" not in fields:
            ids = multifield_values(fields["CONTACT_IDS"])
            record["CONTACT_ID"] = str(ids[0]) if ids else None

    def _after_write(self, etype: str, entity_id: int) -> None:
        table = self._tables[etype]
        record, multi = table.records[entity_id], table.multi[entity_id]
        if "HAS_PHONE" in record:
            record["HAS_PHONE"] = "Y" if multi.get("PHONE") else "N"
            record["HAS_EMAIL"] = "Y" if multi.get("EMAIL") else "N"
            record["HAS_IMOL"] = "Y" if multi.get("IM") else "N"
        if etype == "LEAD":
            record["STATUS_SEMANTIC_ID"] = _lead_semantic(record.get("STATUS_ID"))
        if etype == "DEAL":
            record["STAGE_SEMANTIC_ID"] = _deal_semantic(record.get("STAGE_ID"))
        self._reindex_phones(etype, entity_id)

    def _reindex_phones(self, etype: str, entity_id: int) -> None:
        owner = (etype, entity_id)
        for key in self._phone_keys.pop(owner, set()):
            self._phone_index[key].discard(owner)
        keys = {
            phone_key(str(value["VALUE"]), self.phone_country)
            for value in self._tables[etype].multi[entity_id].get("PHONE", [])
        }
        keys.discard("")
        self._phone_keys[owner] = keys
        for key in keys:
            self._phone_index.setdefault(key, set()).add(owner)

    def _check_value(self, name: str, value: str) -> None:
        if name == "EMAIL" and not _EMAIL.match(value):
            raise CrmValidationError(f"E-mail address '{value}' is incorrect.")

    def _new_value(self, name: str, item: Mapping[str, Any]) -> dict[str, Any]:
        value = str(item["VALUE"]).strip()
        self._check_value(name, value)
        value_id = self._next_multifield_id
        self._next_multifield_id += 1
        default_type = "OTHER" if name == "IM" else "WORK"
        return {
            "ID": str(value_id),
            "VALUE_TYPE": str(item.get("VALUE_TYPE") or default_type),
            "VALUE": value,
            "TYPE_ID": name,
        }

    def _new_values(self, name: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self._new_value(name, i) for i in items if str(i.get("VALUE") or "").strip()]

    def _merge_values(
        self, name: str, current: list[dict[str, Any]], items: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Apply an update's items: with ``ID`` change or delete that value, without it append."""
        merged = [dict(v) for v in current]
        by_id = {v["ID"]: v for v in merged}
        deleted: set[str] = set()
        appended: list[dict[str, Any]] = []
        for item in items:
            raw_id = item.get("ID")
            if raw_id in (None, ""):
                if str(item.get("VALUE") or "").strip():
                    appended.append(self._new_value(name, item))
                continue
            existing = by_id.get(str(raw_id))
            if existing is None:
                continue  # someone else's value id: Bitrix24 leaves it alone (UNCONFIRMED)
            value = str(item.get("VALUE") or "").strip()
            if str(item.get("DELETE", "")).upper() == "Y" or not value:
                deleted.add(existing["ID"])
                continue
            self._check_value(name, value)
            existing["VALUE"] = value
            if item.get("VALUE_TYPE"):
                existing["VALUE_TYPE"] = str(item["VALUE_TYPE"])
        return [v for v in merged if v["ID"] not in deleted] + appended


def multifield_values(raw: Any) -> list[Any]:
    """A list parameter that may arrive as a list, an indexed dict or a single value."""
    if raw is None or raw == "":
        return []
    if isinstance(raw, Mapping):
        return list(raw.values())
    if isinstance(raw, list):
        return raw
    return [raw]
