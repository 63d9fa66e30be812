"""CrmStore: entities, multifields (§6.1), phone lookups (§6.4) and call activities (§6.5)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bitrix24_emulator.store.crm import CrmStore, CrmValidationError, phone_key

NOW = 1_773_000_000.0


def _phones(values: list[str]) -> list[dict[str, str]]:
    return [{"VALUE": v, "VALUE_TYPE": "WORK"} for v in values]


@pytest.fixture
def crm() -> CrmStore:
    store = CrmStore()
    store.add(
        "CONTACT", {"NAME": "Анна", "PHONE": _phones(["+7 (495) 123-45-67"])}, now=NOW, user_id=2
    )
    store.add(
        "COMPANY", {"TITLE": "Вектор", "PHONE": _phones(["8 495 123 45 67"])}, now=NOW, user_id=3
    )
    store.add("LEAD", {"TITLE": "Звонок", "PHONE": _phones(["74951234567"])}, now=NOW, user_id=1)
    return store


class TestPhoneKey:
    @pytest.mark.parametrize(
        "raw",
        ["+7 (495) 123-45-67", "74951234567", "8 495 123 45 67", "8(495)1234567", "4951234567"],
    )
    def test_russian_formats_normalise_alike(self, raw: str) -> None:
        assert phone_key(raw) == "74951234567"

    def test_extension_is_ignored(self) -> None:
        assert phone_key("+7 (495) 123-45-67 доб. 123") == "74951234567"
        assert phone_key("+74951234567 ext 5") == "74951234567"
        assert phone_key("+74951234567#5") == "74951234567"

    def test_without_country_only_digits_count(self) -> None:
        assert phone_key("8 495 123 45 67", None) == "84951234567"

    def test_foreign_numbers_keep_their_digits(self) -> None:
        assert phone_key("+49 30 1234567") == "49301234567"


class TestFindByPhone:
    def test_priority_is_contact_company_lead(self, crm: CrmStore) -> None:
        assert crm.find_by_phone("+74951234567") == [("CONTACT", 1), ("COMPANY", 1), ("LEAD", 1)]

    def test_any_format_matches(self, crm: CrmStore) -> None:
        assert crm.find_by_phone("8 (495) 123-45-67")[0] == ("CONTACT", 1)

    def test_nothing_for_unknown_or_empty(self, crm: CrmStore) -> None:
        assert crm.find_by_phone("+74950000000") == []
        assert crm.find_by_phone("") == []
        assert crm.find_by_phone("abc") == []

    def test_several_of_one_type_are_ordered_by_id(self, crm: CrmStore) -> None:
        crm.add("CONTACT", {"PHONE": _phones(["84951234567"])}, now=NOW, user_id=1)
        assert crm.find_by_phone("74951234567")[:2] == [("CONTACT", 1), ("CONTACT", 2)]

    def test_index_follows_updates(self, crm: CrmStore) -> None:
        phone_id = crm.entity("CONTACT", 1)["PHONE"][0]["ID"]  # type: ignore[index]
        crm.update(
            "CONTACT", 1, {"PHONE": [{"ID": phone_id, "VALUE": "+79990001122"}]}, now=NOW, user_id=1
        )
        assert ("CONTACT", 1) not in crm.find_by_phone("74951234567")
        assert crm.find_by_phone("89990001122") == [("CONTACT", 1)]

    def test_deals_are_never_matched(self, crm: CrmStore) -> None:
        crm.add("DEAL", {"TITLE": "x"}, now=NOW, user_id=1)
        assert all(t != "DEAL" for t, _ in crm.find_by_phone("74951234567"))

    def test_find_by_email_is_case_insensitive(self) -> None:
        crm = CrmStore()
        crm.add("LEAD", {"EMAIL": [{"VALUE": "A@B.ru"}]}, now=NOW, user_id=1)
        crm.add("CONTACT", {"EMAIL": [{"VALUE": "a@b.ru"}]}, now=NOW, user_id=1)
        assert crm.find_by_email(" a@B.RU ") == [("CONTACT", 1), ("LEAD", 1)]


class TestEntities:
    def test_entity_is_wire_shaped(self, crm: CrmStore) -> None:
        contact = crm.entity("CONTACT", 1)
        assert contact is not None
        assert contact["ID"] == "1"
        assert contact["ASSIGNED_BY_ID"] == "2"
        assert contact["HAS_PHONE"] == "Y"
        assert contact["HAS_EMAIL"] == "N"
        assert contact["DATE_CREATE"].endswith("+03:00")
        assert contact["PHONE"] == [
            {"ID": "1", "VALUE_TYPE": "WORK", "VALUE": "+7 (495) 123-45-67", "TYPE_ID": "PHONE"}
        ]
        assert "EMAIL" not in contact  # no values → no key

    def test_entity_missing(self, crm: CrmStore) -> None:
        assert crm.entity("CONTACT", 99) is None
        assert crm.entity("QUOTE", 1) is None

    def test_lead_and_deal_defaults(self) -> None:
        crm = CrmStore()
        lead_id = crm.add("LEAD", {}, now=NOW, user_id=1)
        deal_id = crm.add("DEAL", {}, now=NOW, user_id=1)
        lead, deal = crm.entity("LEAD", lead_id), crm.entity("DEAL", deal_id)
        assert lead is not None
        assert deal is not None
        assert lead["STATUS_ID"] == "NEW"
        assert lead["TITLE"] == f"Лид #{lead_id}"
        assert deal["TITLE"] == f"Сделка #{deal_id}"
        assert deal["STAGE_ID"] == "NEW"
        assert deal["CATEGORY_ID"] == "0"
        assert "PHONE" not in deal

    def test_unknown_and_readonly_fields_are_ignored(self) -> None:
        crm = CrmStore()
        new_id = crm.add(
            "CONTACT", {"NAME": "x", "FOO": "bar", "ID": 77, "HAS_PHONE": "Y"}, now=NOW, user_id=1
        )
        contact = crm.entity("CONTACT", new_id)
        assert contact is not None
        assert new_id == 1
        assert "FOO" not in contact
        assert contact["HAS_PHONE"] == "N"

    def test_values_become_strings(self) -> None:
        crm = CrmStore()
        new_id = crm.add(
            "DEAL", {"OPPORTUNITY": 1500, "COMPANY_ID": 3, "UF_CRM_X": 5}, now=NOW, user_id=1
        )
        deal = crm.entity("DEAL", new_id)
        assert deal is not None
        assert deal["OPPORTUNITY"] == "1500.00"
        assert deal["COMPANY_ID"] == "3"
        assert deal["UF_CRM_X"] == "5"

    def test_invalid_email_is_refused(self) -> None:
        crm = CrmStore()
        with pytest.raises(CrmValidationError, match="not-an-email"):
            crm.add("CONTACT", {"EMAIL": [{"VALUE": "not-an-email"}]}, now=NOW, user_id=1)

    def test_display_name(self, crm: CrmStore) -> None:
        crm.update("CONTACT", 1, {"LAST_NAME": "Соколова"}, now=NOW, user_id=1)
        assert crm.display_name("CONTACT", 1) == "Анна Соколова"
        assert crm.display_name("COMPANY", 1) == "Вектор"
        assert crm.display_name("LEAD", 9) == ""


class TestMultifieldUpdate:
    """§6.1: with ID modify, without ID append, delete by DELETE=Y, empty VALUE or no VALUE."""

    @pytest.fixture
    def crm(self) -> CrmStore:
        store = CrmStore()
        store.add("CONTACT", {"PHONE": _phones(["111", "222", "333", "444"])}, now=NOW, user_id=1)
        return store

    def _values(self, crm: CrmStore) -> list[tuple[str, str]]:
        contact = crm.entity("CONTACT", 1)
        assert contact is not None
        return [(v["ID"], v["VALUE"]) for v in contact.get("PHONE", [])]

    def test_without_id_appends(self, crm: CrmStore) -> None:
        crm.update("CONTACT", 1, {"PHONE": [{"VALUE": "555"}]}, now=NOW, user_id=1)
        assert self._values(crm) == [
            ("1", "111"),
            ("2", "222"),
            ("3", "333"),
            ("4", "444"),
            ("5", "555"),
        ]

    def test_with_id_modifies(self, crm: CrmStore) -> None:
        crm.update(
            "CONTACT",
            1,
            {"PHONE": [{"ID": "2", "VALUE": "999", "VALUE_TYPE": "MOBILE"}]},
            now=NOW,
            user_id=1,
        )
        assert self._values(crm)[1] == ("2", "999")
        assert crm.entity("CONTACT", 1)["PHONE"][1]["VALUE_TYPE"] == "MOBILE"  # type: ignore[index]

    def test_deletes(self, crm: CrmStore) -> None:
        crm.update(
            "CONTACT",
            1,
            {"PHONE": [{"ID": 1, "DELETE": "Y"}, {"ID": "2", "VALUE": ""}, {"ID": "3"}]},
            now=NOW,
            user_id=1,
        )
        assert self._values(crm) == [("4", "444")]

    def test_deleting_every_phone_clears_has_phone(self, crm: CrmStore) -> None:
        crm.update("CONTACT", 1, {"PHONE": [{"ID": i} for i in "1234"]}, now=NOW, user_id=1)
        assert crm.entity("CONTACT", 1)["HAS_PHONE"] == "N"  # type: ignore[index]
        assert "PHONE" not in crm.entity("CONTACT", 1)  # type: ignore[operator]

    def test_unknown_id_is_left_alone(self, crm: CrmStore) -> None:
        crm.update("CONTACT", 1, {"PHONE": [{"ID": "77", "VALUE": "1"}]}, now=NOW, user_id=1)
        assert len(self._values(crm)) == 4

    def test_form_encoded_indexed_dict(self, crm: CrmStore) -> None:
        crm.update(
            "CONTACT",
            1,
            {"PHONE": {"0": {"VALUE": "555"}, "1": {"VALUE": "666"}}},
            now=NOW,
            user_id=1,
        )
        assert [v for _, v in self._values(crm)][-2:] == ["555", "666"]

    def test_other_fields_keep_multifields(self, crm: CrmStore) -> None:
        crm.update("CONTACT", 1, {"NAME": "x"}, now=NOW + 60, user_id=3)
        contact = crm.entity("CONTACT", 1)
        assert contact is not None
        assert len(contact["PHONE"]) == 4
        assert contact["MODIFY_BY_ID"] == "3"
        assert contact["DATE_MODIFY"] != contact["DATE_CREATE"]

    def test_update_missing_entity(self, crm: CrmStore) -> None:
        assert crm.update("CONTACT", 42, {"NAME": "x"}, now=NOW, user_id=1) is False


class TestQuery:
    def test_phone_filter_is_exact(self, crm: CrmStore) -> None:
        exact = crm.query("CONTACT", conditions={"PHONE": "+7 (495) 123-45-67"}, select=["ID"])
        other_format = crm.query("CONTACT", conditions={"PHONE": "74951234567"}, select=["ID"])
        assert [i["ID"] for i in exact.items] == ["1"]
        assert other_format.items == []

    def test_star_does_not_return_multifields(self, crm: CrmStore) -> None:
        page = crm.query("CONTACT", conditions={}, select=["*"])
        assert "PHONE" not in page.items[0]
        assert "NAME" in page.items[0]

    def test_named_multifield_is_returned(self, crm: CrmStore) -> None:
        page = crm.query("CONTACT", conditions={}, select=["NAME", "PHONE"])
        assert set(page.items[0]) == {"ID", "NAME", "PHONE"}


class TestCallActivities:
    def test_add_and_attach(self, crm: CrmStore) -> None:
        activity_id = crm.add_call_activity(
            owner_type="CONTACT",
            owner_id=1,
            call_id="externalCall.abc.1",
            user_id=2,
            phone="+74951234567",
            incoming=True,
            duration=95,
            status_code="200",
            start=NOW,
            now=NOW + 100,
        )
        activity = crm.activity(activity_id)
        assert activity is not None
        assert activity["OWNER_TYPE_ID"] == "3"
        assert activity["OWNER_ID"] == "1"
        assert activity["TYPE_ID"] == "2"
        assert activity["DIRECTION"] == "1"
        assert activity["RESPONSIBLE_ID"] == "2"
        assert activity["COMPLETED"] == "Y"
        assert activity["ORIGIN_ID"] == "VI_externalCall.abc.1"
        assert activity["COMMUNICATIONS"][0]["VALUE"] == "+74951234567"
        crm.attach_activity_record(activity_id, 10)
        crm.attach_activity_record(activity_id, 11)
        assert crm.activity(activity_id)["STORAGE_ELEMENT_IDS"] == [11]  # type: ignore[index]

    def test_missed_inbound_call_stays_open(self, crm: CrmStore) -> None:
        activity_id = crm.add_call_activity(
            owner_type="LEAD",
            owner_id=1,
            call_id="c",
            user_id=1,
            phone="1",
            incoming=True,
            duration=0,
            status_code="304",
            start=NOW,
            now=NOW,
        )
        activity = crm.activity(activity_id)
        assert activity is not None
        assert activity["COMPLETED"] == "N"
        assert activity["OWNER_TYPE_ID"] == "1"

    def test_attach_to_unknown_activity(self, crm: CrmStore) -> None:
        with pytest.raises(KeyError):
            crm.attach_activity_record(5, 1)

    def test_add_lead_uses_assigned_user(self) -> None:
        crm = CrmStore()
        lead_id = crm.add_lead(
            {
                "TITLE": "Звонок",
                "PHONE": _phones(["+7 900"]),
                "SOURCE_ID": "CALL",
                "ASSIGNED_BY_ID": 3,
            },
            NOW,
        )
        lead = crm.entity("LEAD", lead_id)
        assert lead is not None
        assert lead["ASSIGNED_BY_ID"] == "3"
        assert lead["SOURCE_ID"] == "CALL"
        assert crm.find_by_phone("+7 900") == [("LEAD", lead_id)]


@given(
    digits=st.text(alphabet="0123456789", min_size=10, max_size=10),
    prefix=st.sampled_from(["+7", "7", "8", "+7 ", "8 "]),
    seps=st.lists(st.sampled_from(["", " ", "-", "(", ")", ".", "  "]), min_size=10, max_size=10),
)
def test_any_russian_formatting_finds_the_same_entity(
    digits: str, prefix: str, seps: list[str]
) -> None:
    crm = CrmStore()
    crm.add("CONTACT", {"PHONE": _phones(["+7" + digits])}, now=NOW, user_id=1)
    written = prefix + "".join(sep + d for sep, d in zip(seps, digits, strict=True))
    assert crm.find_by_phone(written) == [("CONTACT", 1)]
