"""Conformance of user.get (spec §6.6) and profile."""

from __future__ import annotations

from typing import Any

import pytest
from _helpers import call, call_error, make_ctx

from bitrix24_emulator.methods.registry import REGISTRY, CallContext, ListResult


@pytest.fixture
def ctx() -> CallContext:
    return make_ctx()


def _ids(result: Any) -> list[str]:
    items = result.items if isinstance(result, ListResult) else result
    return [u["ID"] for u in items]


class TestUserGet:
    def test_all_users_by_id(self, ctx: CallContext) -> None:
        result = call(ctx, "user.get")
        assert isinstance(result, ListResult)
        assert _ids(result) == ["1", "2", "3", "4", "5"]
        assert (result.total, result.next) == (5, None)

    def test_item_shape(self, ctx: CallContext) -> None:
        user = call(ctx, "user.get", {"ID": 1}).items[0]
        assert user["ID"] == "1"
        assert user["ACTIVE"] is True
        assert user["UF_PHONE_INNER"] == "101"
        assert user["UF_DEPARTMENT"] == [1]
        assert isinstance(user["NAME"], str)

    @pytest.mark.parametrize(
        "params",
        [
            {"FILTER": {"UF_PHONE_INNER": "102"}},
            {"filter": {"UF_PHONE_INNER": "102"}},
            {"filter": {"uf_phone_inner": 102}},
            {"UF_PHONE_INNER": "102"},  # top-level filter fields, as the docs' first example
        ],
    )
    def test_filter_by_inner_phone(self, ctx: CallContext, params: dict[str, Any]) -> None:
        assert _ids(call(ctx, "user.get", params)) == ["2"]

    def test_inner_phone_exact(self, ctx: CallContext) -> None:
        assert _ids(call(ctx, "user.get", {"filter": {"UF_PHONE_INNER": "10"}})) == []

    @pytest.mark.parametrize(
        ("value", "ids"),
        [
            (True, ["1", "2", "3", "5"]),
            ("true", ["1", "2", "3", "5"]),
            ("Y", ["1", "2", "3", "5"]),
            (False, ["4"]),
            ("N", ["4"]),
        ],
    )
    def test_filter_active(self, ctx: CallContext, value: Any, ids: list[str]) -> None:
        assert _ids(call(ctx, "user.get", {"filter": {"ACTIVE": value}})) == ids

    def test_inactive_user_with_inner_number(self, ctx: CallContext) -> None:
        params = {"filter": {"UF_PHONE_INNER": "104", "ACTIVE": True}}
        assert _ids(call(ctx, "user.get", params)) == []

    def test_filter_department_and_operators(self, ctx: CallContext) -> None:
        assert _ids(call(ctx, "user.get", {"filter": {"UF_DEPARTMENT": 2}})) == ["2", "3", "4"]
        assert _ids(call(ctx, "user.get", {"filter": {">ID": 3}})) == ["4", "5"]
        assert _ids(call(ctx, "user.get", {"filter": {"@ID": [1, 5]}})) == ["1", "5"]
        assert _ids(call(ctx, "user.get", {"filter": {"%LAST_NAME": "ова"}})) == ["2", "4"]
        assert _ids(call(ctx, "user.get", {"filter": {"!%LAST_NAME": "ова"}})) == ["1", "3", "5"]

    def test_name_search(self, ctx: CallContext) -> None:
        assert _ids(call(ctx, "user.get", {"filter": {"NAME_SEARCH": "мария иван"}})) == ["2"]

    def test_unknown_filter_field_is_ignored(self, ctx: CallContext) -> None:
        assert len(_ids(call(ctx, "user.get", {"filter": {"NO_SUCH": 1}}))) == 5

    def test_sort_and_order(self, ctx: CallContext) -> None:
        assert _ids(call(ctx, "user.get", {"sort": "ID", "order": "DESC"})) == [
            "5",
            "4",
            "3",
            "2",
            "1",
        ]
        by_name = call(ctx, "user.get", {"SORT": "LAST_NAME", "ORDER": "ASC"})
        names = [u["LAST_NAME"] for u in by_name.items]
        assert names == sorted(names, key=str.lower)

    def test_select(self, ctx: CallContext) -> None:
        user = call(ctx, "user.get", {"ID": 2, "select": ["NAME", "UF_PHONE_INNER"]}).items[0]
        assert set(user) == {"ID", "NAME", "UF_PHONE_INNER"}

    def test_pages_of_fifty(self) -> None:
        ctx = make_ctx(
            {"users": [{"ID": i, "UF_PHONE_INNER": str(100 + i)} for i in range(1, 121)]}
        )
        first = call(ctx, "user.get")
        assert (len(first.items), first.total, first.next) == (50, 120, 50)
        third = call(ctx, "user.get", {"start": 100})
        assert (len(third.items), third.next) == (20, None)
        assert third.items[0]["ID"] == "101"
        no_count = call(ctx, "user.get", {"start": -1})
        assert isinstance(no_count, list)
        assert len(no_count) == 50

    def test_bots_are_not_listed(self) -> None:
        ctx = make_ctx({"users": [{"ID": 1}, {"ID": 2, "EXTERNAL_AUTH_ID": "bot"}]})
        assert _ids(call(ctx, "user.get")) == ["1"]

    def test_webhook_may_call(self) -> None:
        assert len(_ids(call(make_ctx(kind="webhook"), "user.get"))) == 5

    def test_registration(self) -> None:
        registered = REGISTRY.get("USER.GET")
        assert registered is not None
        assert registered.scope == "user_brief"
        assert not registered.app_only


class TestProfile:
    def test_admin(self, ctx: CallContext) -> None:
        result = call(ctx, "profile")
        assert result["ID"] == "1"
        assert result["ADMIN"] is True
        assert result["NAME"] == "Иван"
        assert result["LAST_NAME"] == "Петров"
        assert isinstance(result["TIME_ZONE_OFFSET"], int)

    def test_ordinary_user(self) -> None:
        result = call(make_ctx(user_id=3), "profile")
        assert (result["ID"], result["ADMIN"]) == ("3", False)

    @pytest.mark.parametrize("user_id", [4, 99])
    def test_inactive_or_unknown_caller(self, user_id: int) -> None:
        err = call_error(make_ctx(user_id=user_id), "profile")
        assert (err.code, err.http_status) == ("user_access_error", 403)
