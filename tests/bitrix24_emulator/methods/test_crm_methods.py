# Russian test data: ruff would flag its Cyrillic letters as look-alikes.
# ruff: noqa: RUF001
"""Conformance of the CRM method handlers with spec §6.1-§6.5, §4.5 and §9."""

from __future__ import annotations

from typing import Any

import pytest
from _helpers import NOW, call, call_error, make_ctx

from bitrix24_emulator.methods.registry import CallContext, ListResult

ENTITY_NAMES = ["contact", "company", "lead", "deal"]


@pytest.fixture
def ctx() -> CallContext:
    return make_ctx()


def _many_contacts(count: int) -> CallContext:
    seed: dict[str, Any] = {
        "users": [{"ID": 1}],
        "contacts": [
            {"ID": i, "NAME": f"c{i}", "PHONE": [{"VALUE": f"+7900000{i:04d}"}]}
            for i in range(1, count + 1)
        ],
    }
    return make_ctx(seed)


class TestList:
    def test_default_select_omits_multifields(self, ctx: CallContext) -> None:
        result = call(ctx, "crm.contact.list")
        assert isinstance(result, ListResult)
        assert result.total == 5
        assert result.next is None
        first = result.items[0]
        assert first["ID"] == "1"
        assert "NAME" in first
        assert "PHONE" not in first
        assert "EMAIL" not in first

    def test_star_does_not_return_phone(self, ctx: CallContext) -> None:
        result = call(ctx, "crm.contact.list", {"select": ["*"]})
        assert all("PHONE" not in item for item in result.items)

    def test_phone_listed_explicitly_is_returned(self, ctx: CallContext) -> None:
        result = call(ctx, "crm.contact.list", {"select": ["ID", "NAME", "LAST_NAME", "PHONE"]})
        first = result.items[0]
        assert set(first) == {"ID", "NAME", "LAST_NAME", "PHONE"}
        assert first["PHONE"][0] == {
            "ID": "1",
            "VALUE_TYPE": "WORK",
            "VALUE": "+7 (495) 123-45-67",
            "TYPE_ID": "PHONE",
        }
        no_phone = next(i for i in result.items if i["ID"] == "4")
        assert "PHONE" not in no_phone

    def test_star_plus_phone(self, ctx: CallContext) -> None:
        result = call(ctx, "crm.company.list", {"select": ["*", "PHONE"]})
        assert "TITLE" in result.items[0]
        assert "PHONE" in result.items[0]

    def test_phone_filter_exact_match_only(self, ctx: CallContext) -> None:
        exact = call(ctx, "crm.contact.list", {"filter": {"PHONE": "+79031112233"}})
        assert [i["ID"] for i in exact.items] == ["2"]
        other_format = call(ctx, "crm.contact.list", {"filter": {"PHONE": "8 903 111-22-33"}})
        assert other_format.items == []
        assert other_format.total == 0

    @pytest.mark.parametrize("key", ["%PHONE", "=%PHONE", "%=PHONE"])
    def test_like_on_phone_is_still_exact(self, ctx: CallContext, key: str) -> None:
        assert call(ctx, "crm.contact.list", {"filter": {key: "7903"}}).items == []
        exact = call(ctx, "crm.contact.list", {"filter": {key: "+79031112233"}})
        assert [i["ID"] for i in exact.items] == ["2"]

    @pytest.mark.parametrize(
        ("conditions", "ids"),
        [
            ({">ID": 3}, ["4", "5"]),
            ({">=ID": "3"}, ["3", "4", "5"]),
            ({"<ID": 2}, ["1"]),
            ({"<=ID": 2}, ["1", "2"]),
            ({"@ID": [1, 3]}, ["1", "3"]),
            ({"!@ID": ["1", "3"]}, ["2", "4", "5"]),
            ({"ID": [2, 4]}, ["2", "4"]),
            ({"=ID": 2}, ["2"]),
            ({"!ID": 2}, ["1", "3", "4", "5"]),
            ({"!=ID": 2}, ["1", "3", "4", "5"]),
            ({"%LAST_NAME": "ова"}, ["1", "3"]),
            ({"=%LAST_NAME": "Мор%"}, ["3"]),
            ({"%=LAST_NAME": "%кол%"}, ["1"]),
            ({"NAME": "анна"}, ["1"]),
            ({"ASSIGNED_BY_ID": 2}, ["1", "3"]),
            ({"ASSIGNED_BY_ID": 2, ">ID": 1}, ["3"]),
            ({"EMAIL": "anna.sokolova@client.ru"}, ["1"]),
            ({"HAS_PHONE": "N"}, ["4"]),
            ({"LOGIC": "OR", "ID": 1}, ["1"]),
            ({"NO_SUCH_FIELD": "x"}, ["1", "2", "3", "4", "5"]),
        ],
    )
    def test_filter_operators(
        self, ctx: CallContext, conditions: dict[str, Any], ids: list[str]
    ) -> None:
        result = call(ctx, "crm.contact.list", {"filter": conditions})
        assert [i["ID"] for i in result.items] == ids

    def test_date_filter(self, ctx: CallContext) -> None:
        call(ctx, "crm.lead.add", {"fields": {"TITLE": "new"}})  # created at NOW, after the seed
        result = call(
            ctx, "crm.lead.list", {"filter": {">DATE_CREATE": "2026-01-15T09:30:00+03:00"}}
        )
        assert [i["TITLE"] for i in result.items] == ["new"]

    def test_order(self, ctx: CallContext) -> None:
        desc = call(ctx, "crm.contact.list", {"order": {"ID": "DESC"}})
        assert [i["ID"] for i in desc.items] == ["5", "4", "3", "2", "1"]
        by_name = call(
            ctx, "crm.contact.list", {"order": {"LAST_NAME": "asc"}, "select": ["LAST_NAME"]}
        )
        names = [i["LAST_NAME"] for i in by_name.items]
        assert names == sorted(names, key=str.lower)

    def test_numeric_order_is_numeric(self) -> None:
        ctx = _many_contacts(12)
        result = call(ctx, "crm.contact.list", {"order": {"ID": "DESC"}})
        assert result.items[0]["ID"] == "12"

    def test_upper_case_parameter_names(self, ctx: CallContext) -> None:
        result = call(ctx, "crm.contact.list", {"FILTER": {"ID": 2}, "SELECT": ["PHONE"]})
        assert [i["ID"] for i in result.items] == ["2"]
        assert "PHONE" in result.items[0]

    @pytest.mark.parametrize("param", ["filter", "order"])
    def test_scalar_filter_or_order_is_refused(self, ctx: CallContext, param: str) -> None:
        err = call_error(ctx, "crm.contact.list", {param: "ID"})
        assert (err.code, err.http_status) == ("", 400)
        assert err.description == f"Parameter '{param}' must be array"

    def test_list_filter_is_an_empty_php_array(self, ctx: CallContext) -> None:
        assert call(ctx, "crm.contact.list", {"filter": []}).total == 5

    @pytest.mark.parametrize("entity", ENTITY_NAMES)
    def test_every_entity_lists(self, ctx: CallContext, entity: str) -> None:
        result = call(ctx, f"crm.{entity}.list")
        assert isinstance(result, ListResult)
        assert result.total >= 1


class TestPagination:
    def test_pages_of_fifty(self) -> None:
        ctx = _many_contacts(120)
        first = call(ctx, "crm.contact.list")
        assert (len(first.items), first.total, first.next) == (50, 120, 50)
        second = call(ctx, "crm.contact.list", {"start": 50})
        assert (len(second.items), second.next) == (50, 100)
        assert second.items[0]["ID"] == "51"
        last = call(ctx, "crm.contact.list", {"start": "100"})
        assert (len(last.items), last.total, last.next) == (20, 120, None)

    def test_exactly_fifty_has_no_next(self) -> None:
        result = call(_many_contacts(50), "crm.contact.list")
        assert (len(result.items), result.next) == (50, None)

    def test_start_is_rounded_down_to_a_page(self) -> None:
        result = call(_many_contacts(120), "crm.contact.list", {"start": 75})
        assert result.items[0]["ID"] == "51"

    def test_start_past_the_end(self) -> None:
        result = call(_many_contacts(10), "crm.contact.list", {"start": 50})
        assert (result.items, result.total, result.next) == ([], 10, None)

    def test_start_minus_one_has_no_total(self) -> None:
        result = call(_many_contacts(120), "crm.contact.list", {"start": -1})
        assert isinstance(result, list)
        assert len(result) == 50

    def test_keyset_paging_by_id(self) -> None:
        ctx = _many_contacts(120)
        result = call(
            ctx, "crm.contact.list", {"start": -1, "filter": {">ID": 100}, "order": {"ID": "ASC"}}
        )
        assert [i["ID"] for i in result][:2] == ["101", "102"]
        assert len(result) == 20


class TestGet:
    @pytest.mark.parametrize("entity", ENTITY_NAMES)
    def test_get_returns_wire_shaped_record(self, ctx: CallContext, entity: str) -> None:
        record = call(ctx, f"crm.{entity}.get", {"id": 1})
        assert record["ID"] == "1"
        assert isinstance(record["ASSIGNED_BY_ID"], str)
        assert record["DATE_CREATE"].endswith("+03:00")

    def test_get_includes_multifields(self, ctx: CallContext) -> None:
        record = call(ctx, "crm.contact.get", {"ID": "1"})
        assert [p["VALUE"] for p in record["PHONE"]] == ["+7 (495) 123-45-67", "8 916 555-12-34"]
        assert record["EMAIL"][0]["TYPE_ID"] == "EMAIL"
        assert record["HAS_PHONE"] == "Y"

    @pytest.mark.parametrize("bad", [None, 0, -1, "abc", ""])
    def test_invalid_id(self, ctx: CallContext, bad: Any) -> None:
        params = {} if bad is None else {"id": bad}
        err = call_error(ctx, "crm.contact.get", params)
        assert (err.code, err.description, err.http_status) == (
            "",
            "ID is not defined or invalid.",
            400,
        )

    def test_not_found(self, ctx: CallContext) -> None:
        err = call_error(ctx, "crm.lead.get", {"id": 999})
        assert (err.code, err.description, err.http_status) == ("", "Not found", 400)


class TestAdd:
    def test_add_contact_with_phones(self, ctx: CallContext) -> None:
        new_id = call(
            ctx,
            "crm.contact.add",
            {
                "fields": {
                    "NAME": "Игорь",
                    "PHONE": [{"VALUE": "+79005553535", "VALUE_TYPE": "MOBILE"}],
                    "EMAIL": [{"VALUE": "igor@example.ru"}],
                    "UNKNOWN_FIELD": "ignored",
                },
                "params": {"REGISTER_SONET_EVENT": "N"},
            },
        )
        assert isinstance(new_id, int)
        assert new_id == 6
        record = call(ctx, "crm.contact.get", {"id": new_id})
        assert record["NAME"] == "Игорь"
        assert record["ASSIGNED_BY_ID"] == "1"  # defaults to the caller
        assert record["PHONE"][0]["VALUE_TYPE"] == "MOBILE"
        assert record["EMAIL"][0]["VALUE_TYPE"] == "WORK"
        assert "UNKNOWN_FIELD" not in record

    def test_form_encoded_fields(self, ctx: CallContext) -> None:
        # FIELDS[PHONE][0][VALUE]=... decodes to indexed dicts.
        new_id = call(
            ctx,
            "crm.lead.add",
            {
                "FIELDS": {
                    "TITLE": "Форма",
                    "PHONE": {"0": {"VALUE": "+7 900 000-00-00", "VALUE_TYPE": "WORK"}},
                }
            },
        )
        record = call(ctx, "crm.lead.get", {"id": new_id})
        assert record["PHONE"][0]["VALUE"] == "+7 900 000-00-00"
        assert record["STATUS_ID"] == "NEW"

    def test_caller_is_the_default_responsible(self) -> None:
        ctx = make_ctx(user_id=3)
        new_id = call(ctx, "crm.company.add", {"fields": {"TITLE": "x"}})
        record = call(ctx, "crm.company.get", {"id": new_id})
        assert record["ASSIGNED_BY_ID"] == "3"
        assert record["CREATED_BY_ID"] == "3"

    def test_deal_defaults(self, ctx: CallContext) -> None:
        new_id = call(ctx, "crm.deal.add", {"fields": {"CONTACT_ID": 1}})
        record = call(ctx, "crm.deal.get", {"id": new_id})
        assert record["TITLE"] == f"Сделка #{new_id}"
        assert record["CATEGORY_ID"] == "0"
        assert record["CONTACT_ID"] == "1"
        assert record["CLOSEDATE"] > record["BEGINDATE"]

    @pytest.mark.parametrize("fields", [None, "x", 5])
    def test_fields_must_be_array(self, ctx: CallContext, fields: Any) -> None:
        params = {} if fields is None else {"fields": fields}
        err = call_error(ctx, "crm.contact.add", params)
        assert (err.code, err.description, err.http_status) == (
            "",
            "Parameter 'fields' must be array.",
            400,
        )

    def test_params_must_be_array(self, ctx: CallContext) -> None:
        err = call_error(ctx, "crm.contact.add", {"fields": {"NAME": "x"}, "params": "Y"})
        assert err.description == "Parameter 'params' must be array"

    def test_invalid_email_is_error_core(self, ctx: CallContext) -> None:
        err = call_error(ctx, "crm.contact.add", {"fields": {"EMAIL": [{"VALUE": "nope"}]}})
        assert (err.code, err.http_status) == ("ERROR_CORE", 400)
        assert call(ctx, "crm.contact.list").total == 5  # nothing was created

    def test_deal_invalid_currency(self, ctx: CallContext) -> None:
        err = call_error(ctx, "crm.deal.add", {"fields": {"CURRENCY_ID": "XXX"}})
        assert (err.code, err.http_status) == ("", 400)

    def test_ids_keep_growing(self, ctx: CallContext) -> None:
        first = call(ctx, "crm.lead.add", {"fields": {}})
        second = call(ctx, "crm.lead.add", {"fields": {}})
        assert second == first + 1


class TestUpdate:
    def _phones(self, ctx: CallContext, contact_id: int = 1) -> list[tuple[str, str]]:
        record = call(ctx, "crm.contact.get", {"id": contact_id})
        return [(p["ID"], p["VALUE"]) for p in record.get("PHONE", [])]

    def test_scalar_update(self, ctx: CallContext) -> None:
        assert call(ctx, "crm.contact.update", {"id": 1, "fields": {"NAME": "Анна-Мария"}}) is True
        record = call(ctx, "crm.contact.get", {"id": 1})
        assert record["NAME"] == "Анна-Мария"
        assert record["LAST_NAME"] == "Соколова"  # untouched
        assert len(record["PHONE"]) == 2  # untouched

    def test_phone_without_id_is_appended(self, ctx: CallContext) -> None:
        call(ctx, "crm.contact.update", {"id": 1, "fields": {"PHONE": [{"VALUE": "+79990000000"}]}})
        assert [v for _, v in self._phones(ctx)] == [
            "+7 (495) 123-45-67",
            "8 916 555-12-34",
            "+79990000000",
        ]

    def test_phone_with_id_is_replaced(self, ctx: CallContext) -> None:
        call(
            ctx,
            "crm.contact.update",
            {"id": 1, "fields": {"PHONE": [{"ID": "2", "VALUE": "+79990000000"}]}},
        )
        assert self._phones(ctx) == [("1", "+7 (495) 123-45-67"), ("2", "+79990000000")]

    @pytest.mark.parametrize(
        "item", [{"ID": 1, "DELETE": "Y"}, {"ID": "1", "VALUE": ""}, {"ID": 1}]
    )
    def test_phone_deleted(self, ctx: CallContext, item: dict[str, Any]) -> None:
        call(ctx, "crm.contact.update", {"id": 1, "fields": {"PHONE": [item]}})
        assert self._phones(ctx) == [("2", "8 916 555-12-34")]

    def test_updated_phone_is_found_by_duplicate_search(self, ctx: CallContext) -> None:
        call(
            ctx,
            "crm.contact.update",
            {"id": 4, "fields": {"PHONE": [{"VALUE": "8 (999) 123-00-00"}]}},
        )
        assert call(
            ctx, "crm.duplicate.findbycomm", {"type": "PHONE", "values": ["+79991230000"]}
        ) == {"CONTACT": [4]}

    @pytest.mark.parametrize(
        ("entity", "word"),
        [("contact", "Contact"), ("lead", "Lead"), ("company", "Company"), ("deal", "Deal")],
    )
    def test_not_found(self, ctx: CallContext, entity: str, word: str) -> None:
        err = call_error(ctx, f"crm.{entity}.update", {"id": 999, "fields": {"TITLE": "x"}})
        assert (err.code, err.description, err.http_status) == ("", f"{word} is not found", 400)

    def test_invalid_id(self, ctx: CallContext) -> None:
        err = call_error(ctx, "crm.contact.update", {"id": "x", "fields": {"NAME": "a"}})
        assert err.description == "ID is not defined or invalid."

    def test_fields_required(self, ctx: CallContext) -> None:
        err = call_error(ctx, "crm.contact.update", {"id": 1})
        assert err.description == "Parameter 'fields' must be array."

    def test_modify_stamp(self) -> None:
        ctx = make_ctx(user_id=2)
        call(ctx, "crm.lead.update", {"id": 1, "fields": {"STATUS_ID": "JUNK"}})
        record = call(ctx, "crm.lead.get", {"id": 1})
        assert record["MODIFY_BY_ID"] == "2"
        assert record["STATUS_SEMANTIC_ID"] == "F"
        assert record["DATE_MODIFY"] > record["DATE_CREATE"]


class TestFindByComm:
    def test_found_across_types(self, ctx: CallContext) -> None:
        result = call(
            ctx, "crm.duplicate.findbycomm", {"type": "PHONE", "values": ["+7 (495) 100-20-30"]}
        )
        assert result == {"LEAD": [2], "CONTACT": [5], "COMPANY": [2]}
        assert list(result) == ["LEAD", "CONTACT", "COMPANY"]

    def test_only_matched_keys(self, ctx: CallContext) -> None:
        result = call(ctx, "crm.duplicate.findbycomm", {"type": "PHONE", "values": ["89031112233"]})
        assert result == {"CONTACT": [2]}

    def test_nothing_found_is_empty_array(self, ctx: CallContext) -> None:
        result = call(
            ctx, "crm.duplicate.findbycomm", {"type": "PHONE", "values": ["+70000000000"]}
        )
        assert result == []
        assert isinstance(result, list)

    def test_extension_is_ignored(self, ctx: CallContext) -> None:
        result = call(
            ctx, "crm.duplicate.findbycomm", {"type": "PHONE", "values": ["+74955550000"]}
        )
        assert result == {"LEAD": [4]}

    def test_entity_type_narrows(self, ctx: CallContext) -> None:
        result = call(
            ctx,
            "crm.duplicate.findbycomm",
            {"type": "PHONE", "values": ["+74951002030"], "entity_type": "COMPANY"},
        )
        assert result == {"COMPANY": [2]}

    def test_email(self, ctx: CallContext) -> None:
        result = call(
            ctx,
            "crm.duplicate.findbycomm",
            {"type": "email", "values": ["INFO@romashka.example", "anna.sokolova@client.ru"]},
        )
        assert result == {"CONTACT": [1], "COMPANY": [1]}

    def test_form_encoded_values(self, ctx: CallContext) -> None:
        result = call(
            ctx, "crm.duplicate.findbycomm", {"type": "PHONE", "values": {"0": "89031112233"}}
        )
        assert result == {"CONTACT": [2]}

    def test_twenty_or_more_of_one_type_hides_the_rest(self) -> None:
        seed: dict[str, Any] = {
            "leads": [{"PHONE": [{"VALUE": "+79000000001"}]} for _ in range(21)],
            "contacts": [{"PHONE": [{"VALUE": "+79000000001"}]}],
        }
        result = call(
            make_ctx(seed), "crm.duplicate.findbycomm", {"type": "PHONE", "values": ["79000000001"]}
        )
        assert list(result) == ["LEAD"]
        assert len(result["LEAD"]) == 20

    def test_missing_type(self, ctx: CallContext) -> None:
        err = call_error(ctx, "crm.duplicate.findbycomm", {"values": ["1"]})
        assert (err.code, err.description, err.http_status) == (
            "Communication type is not defined",
            "Parameter 'type' is required.",
            400,
        )

    def test_unsupported_type(self, ctx: CallContext) -> None:
        err = call_error(ctx, "crm.duplicate.findbycomm", {"type": "FAX", "values": ["1"]})
        assert err.description == "Communication type 'FAX' is not supported in current context"
        assert err.http_status == 400

    @pytest.mark.parametrize("values", [None, [], "", [""]])
    def test_missing_values(self, ctx: CallContext, values: Any) -> None:
        params: dict[str, Any] = {"type": "PHONE"}
        if values is not None:
            params["values"] = values
        err = call_error(ctx, "crm.duplicate.findbycomm", params)
        assert (err.description, err.http_status) == ("Communication values is not defined", 400)

    def test_at_most_twenty_values(self, ctx: CallContext) -> None:
        values = [f"+7900000{i:04d}" for i in range(21)]
        err = call_error(ctx, "crm.duplicate.findbycomm", {"type": "PHONE", "values": values})
        assert err.http_status == 400
        assert call(ctx, "crm.duplicate.findbycomm", {"type": "PHONE", "values": values[:20]}) == []

    def test_bad_entity_type(self, ctx: CallContext) -> None:
        err = call_error(
            ctx,
            "crm.duplicate.findbycomm",
            {"type": "PHONE", "values": ["1"], "entity_type": "DEAL"},
        )
        assert err.http_status == 400


class TestActivityList:
    @pytest.fixture
    def ctx(self) -> CallContext:
        ctx = make_ctx()
        crm = ctx.portal.crm
        for owner_type, owner_id, incoming, status in [
            ("CONTACT", 1, True, "200"),
            ("LEAD", 2, False, "486"),
            ("CONTACT", 1, True, "304"),
        ]:
            crm.add_call_activity(
                owner_type=owner_type,
                owner_id=owner_id,
                call_id=f"externalCall.{owner_id}",
                user_id=2,
                phone="+74951234567",
                incoming=incoming,
                duration=30 if status == "200" else 0,
                status_code=status,
                start=NOW,
                now=NOW + 40,
            )
        return ctx

    def test_lists_call_activities(self, ctx: CallContext) -> None:
        result = call(ctx, "crm.activity.list")
        assert result.total == 3
        first = result.items[0]
        assert (
            first["TYPE_ID"],
            first["OWNER_TYPE_ID"],
            first["OWNER_ID"],
            first["DIRECTION"],
        ) == ("2", "3", "1", "1")
        assert "COMMUNICATIONS" not in first

    def test_filter_by_owner(self, ctx: CallContext) -> None:
        result = call(
            ctx,
            "crm.activity.list",
            {"filter": {"OWNER_TYPE_ID": 3, "OWNER_ID": "1", "TYPE_ID": 2}},
        )
        assert [i["ID"] for i in result.items] == ["1", "3"]
        assert [i["COMPLETED"] for i in result.items] == ["Y", "N"]

    def test_filter_by_direction_and_order(self, ctx: CallContext) -> None:
        result = call(
            ctx, "crm.activity.list", {"filter": {"DIRECTION": 1}, "order": {"ID": "DESC"}}
        )
        assert [i["ID"] for i in result.items] == ["3", "1"]

    def test_select_communications(self, ctx: CallContext) -> None:
        result = call(
            ctx, "crm.activity.list", {"select": ["ID", "COMMUNICATIONS"], "filter": {"ID": 2}}
        )
        assert result.items == [
            {
                "ID": "2",
                "COMMUNICATIONS": [
                    {
                        "ID": "2",
                        "TYPE": "PHONE",
                        "VALUE": "+74951234567",
                        "ENTITY_ID": "2",
                        "ENTITY_TYPE_ID": "1",
                    }
                ],
            }
        ]

    def test_recording_shows_in_storage_ids(self, ctx: CallContext) -> None:
        ctx.portal.crm.attach_activity_record(1, 77)
        assert call(ctx, "crm.activity.get", {"id": 1})["STORAGE_ELEMENT_IDS"] == [77]

    def test_get_missing(self, ctx: CallContext) -> None:
        assert call_error(ctx, "crm.activity.get", {"id": 9}).description == "Not found"

    def test_bad_filter(self, ctx: CallContext) -> None:
        assert call_error(ctx, "crm.activity.list", {"filter": "x"}).http_status == 400


class TestRegistration:
    @pytest.mark.parametrize(
        "name",
        [f"crm.{e}.{v}" for e in ENTITY_NAMES for v in ("list", "get", "add", "update")]
        + ["crm.duplicate.findbycomm", "crm.activity.list"],
    )
    def test_registered_with_crm_scope_and_webhook_allowed(self, name: str) -> None:
        from bitrix24_emulator.methods.registry import REGISTRY

        registered = REGISTRY.get(name.upper())
        assert registered is not None
        assert registered.scope == "crm"
        assert not registered.app_only

    def test_webhook_caller_can_read(self) -> None:
        ctx = make_ctx(kind="webhook")
        assert call(ctx, "crm.contact.list").total == 5
