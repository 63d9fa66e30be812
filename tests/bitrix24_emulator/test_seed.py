"""The default seed, seed files and building stores from a seed."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bitrix24_emulator.seed import (
    DEFAULT_SEED,
    SEED_TIME,
    build_stores,
    load_seed_file,
    portal_identity,
)
from bitrix24_emulator.store.query import iso


class TestDefaultSeed:
    def test_portal(self) -> None:
        domain, member_id = portal_identity(DEFAULT_SEED)
        assert domain == "example.bitrix24.ru"
        assert len(member_id) == 32
        int(member_id, 16)

    def test_users_one_to_five(self) -> None:
        users, _ = build_stores(DEFAULT_SEED)
        assert [u["ID"] for u in users.all()] == ["1", "2", "3", "4", "5"]
        inner = {u["UF_PHONE_INNER"] for u in users.all() if users.is_active(int(u["ID"]))}
        assert {"101", "102", "103"} <= inner
        inactive = [u for u in users.all() if not u["ACTIVE"]]
        assert len(inactive) == 1
        mobile_only = [
            u
            for u in users.all()
            if u["PERSONAL_MOBILE"] and not u["UF_PHONE_INNER"] and not u["WORK_PHONE"]
        ]
        assert len(mobile_only) == 1

    def test_crm_phones_in_mixed_formats(self) -> None:
        _, crm = build_stores(DEFAULT_SEED)
        values = [
            v["VALUE"]
            for etype in ("CONTACT", "COMPANY", "LEAD")
            for i in range(1, 6)
            for v in (crm.entity(etype, i) or {}).get("PHONE", [])
        ]
        assert any(v.startswith("+7") for v in values)
        assert any(v.startswith("8") for v in values)
        assert any("(" in v for v in values)
        assert any("-" in v for v in values)
        assert any(" " in v for v in values)
        assert crm.count("CONTACT") >= 3
        assert crm.count("COMPANY") >= 2
        assert crm.count("LEAD") >= 2

    def test_shared_number_prefers_contact(self) -> None:
        _, crm = build_stores(DEFAULT_SEED)
        found = crm.find_by_phone("+7 (495) 100-20-30")
        assert [t for t, _ in found] == ["CONTACT", "COMPANY", "LEAD"]

    def test_records_are_dated_at_seed_time(self) -> None:
        _, crm = build_stores(DEFAULT_SEED)
        assert crm.entity("CONTACT", 1)["DATE_CREATE"] == iso(SEED_TIME)  # type: ignore[index]

    def test_building_twice_gives_independent_stores(self) -> None:
        users_a, crm_a = build_stores(DEFAULT_SEED)
        _, crm_b = build_stores(DEFAULT_SEED)
        crm_a.update("CONTACT", 1, {"NAME": "changed"}, now=SEED_TIME, user_id=1)
        users_a.add({"ID": 9})
        assert crm_b.entity("CONTACT", 1)["NAME"] != "changed"  # type: ignore[index]
        assert DEFAULT_SEED["contacts"][0]["NAME"] != "changed"


class TestLoadSeedFile:
    def test_json(self, tmp_path: Path) -> None:
        path = tmp_path / "seed.json"
        path.write_text(json.dumps(DEFAULT_SEED, ensure_ascii=False), encoding="utf-8")
        assert load_seed_file(str(path)) == DEFAULT_SEED

    def test_toml(self, tmp_path: Path) -> None:
        path = tmp_path / "seed.toml"
        path.write_text(
            """
[portal]
domain = "acme.bitrix24.ru"
member_id = "00112233445566778899aabbccddeeff"

[[users]]
ID = 7
NAME = "Пётр"
UF_PHONE_INNER = "201"

[[contacts]]
NAME = "Клиент"
PHONE = [{VALUE = "8 (812) 000-00-01", VALUE_TYPE = "WORK"}]
""",
            encoding="utf-8",
        )
        seed = load_seed_file(str(path))
        assert portal_identity(seed) == ("acme.bitrix24.ru", "00112233445566778899aabbccddeeff")
        users, crm = build_stores(seed)
        assert users.by_inner_phone("201")["ID"] == "7"  # type: ignore[index]
        assert crm.find_by_phone("+78120000001") == [("CONTACT", 1)]

    @pytest.mark.parametrize(
        ("name", "text", "problem"),
        [
            ("seed.yaml", "{}", "unsupported extension"),
            ("seed.json", "{not json", "invalid JSON at line 1"),
            ("seed.toml", "a = ", "invalid TOML"),
            ("seed.json", "[]", "top level must be an object"),
            ("seed.json", '{"people": []}', "unknown section"),
            ("seed.json", '{"portal": {"member_id": "xyz"}}', "member_id"),
            ("seed.json", '{"users": {}}', "'users' must be a list"),
            ("seed.json", '{"users": [{"NAME": "a"}]}', r"users\[0\] has no ID"),
            ("seed.json", '{"users": [{"ID": 1}, {"ID": "1"}]}', "used twice"),
            ("seed.json", '{"contacts": [{"ID": "abc"}]}', "must be an integer"),
            ("seed.json", '{"leads": [5]}', r"leads\[0\] must be an object"),
        ],
    )
    def test_bad_input_names_file_and_problem(
        self, tmp_path: Path, name: str, text: str, problem: str
    ) -> None:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=problem) as info:
            load_seed_file(str(path))
        assert str(path) in str(info.value)

    def test_missing_file(self, tmp_path: Path) -> None:
        path = tmp_path / "absent.json"
        with pytest.raises(ValueError, match="cannot read"):
            load_seed_file(str(path))


class TestBuildStores:
    def test_empty_seed(self) -> None:
        users, crm = build_stores({})
        assert users.all() == []
        assert crm.count("CONTACT") == 0

    def test_bad_seed_is_refused(self) -> None:
        with pytest.raises(ValueError, match="used twice"):
            build_stores({"contacts": [{"ID": 1}, {"ID": 1}]})

    def test_invalid_crm_record_names_it(self) -> None:
        seed: dict[str, Any] = copy.deepcopy({"contacts": [{"EMAIL": [{"VALUE": "bad"}]}]})
        with pytest.raises(ValueError, match=r"contacts\[0\]"):
            build_stores(seed)

    def test_phone_country_setting(self) -> None:
        _, crm = build_stores(DEFAULT_SEED, phone_country=None)
        # Without Russian normalisation "8 495 ..." and "+7 495 ..." are different numbers.
        assert [t for t, _ in crm.find_by_phone("+7 (495) 100-20-30")] == ["CONTACT", "LEAD"]
