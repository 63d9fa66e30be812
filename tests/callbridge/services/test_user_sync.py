"""Users sync as pure logic: parsing user.get items, upserts, deactivation, overrides."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from callbridge.crm.phones import PhoneNormaliser
from callbridge.services.user_sync import (
    PortalUser,
    StoredUser,
    extension_overrides,
    extensions_by_user,
    parse_user,
    sync_users,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
E164 = PhoneNormaliser().e164


@dataclass
class Source:
    items: list[Mapping[str, Any]]

    async def users(self) -> AsyncIterator[Mapping[str, Any]]:
        for item in self.items:
            yield item


@dataclass
class Directory:
    rows: dict[int, StoredUser] = field(default_factory=dict)
    touched: list[datetime] = field(default_factory=list)

    async def stored(self) -> Sequence[StoredUser]:
        return list(self.rows.values())

    async def upsert(self, user: PortalUser, synced_at: datetime) -> None:
        self.rows[user.user_id] = StoredUser(
            user.user_id, user.name, user.active, user.extension, user.mobile
        )

    async def deactivate(self, user_ids: Sequence[int], synced_at: datetime) -> None:
        for user_id in user_ids:
            self.rows[user_id] = replace(self.rows[user_id], active=False)

    async def touch(self, synced_at: datetime) -> None:
        self.touched.append(synced_at)


def item(user_id: int, **fields: Any) -> dict[str, Any]:
    return {"ID": str(user_id), "NAME": f"U{user_id}", "LAST_NAME": "", "ACTIVE": True} | fields


class TestParseUser:
    def test_inner_phone_is_the_extension(self) -> None:
        user = parse_user(item(1, UF_PHONE_INNER=" 101 "), E164)
        assert user is not None
        assert (user.extension, user.mobile, user.active) == ("101", None, True)

    def test_mobile_first_then_work_phone_in_e164(self) -> None:
        both = parse_user(
            item(2, PERSONAL_MOBILE="8 916 200-00-02", WORK_PHONE="+74951230001"), E164
        )
        work = parse_user(item(3, WORK_PHONE="+7 (495) 123-00-01"), E164)
        assert both is not None
        assert both.mobile == "+79162000002"
        assert work is not None
        assert work.mobile == "+74951230001"

    def test_fired_user_is_inactive(self) -> None:
        for value in (False, "N", "false"):
            user = parse_user(item(4, ACTIVE=value), E164)
            assert user is not None
            assert not user.active

    def test_an_item_without_id_is_skipped(self) -> None:
        assert parse_user({"NAME": "x"}, E164) is None
        assert parse_user({"ID": "abc"}, E164) is None


class TestSyncUsers:
    async def test_adds_updates_and_keeps_unchanged(self) -> None:
        directory = Directory()
        source = Source([item(1, UF_PHONE_INNER="101"), item(2, UF_PHONE_INNER="102")])
        first = await sync_users(source, directory, e164=E164, now=NOW)
        assert (first.added, first.updated, first.unchanged) == (2, 0, 0)
        source.items[1] = item(2, UF_PHONE_INNER="202")
        second = await sync_users(source, directory, e164=E164, now=NOW)
        assert (second.added, second.updated, second.unchanged) == (0, 1, 1)
        assert directory.rows[2].extension == "202"
        assert directory.touched == [NOW, NOW]

    async def test_users_gone_from_the_portal_are_deactivated(self) -> None:
        directory = Directory()
        await sync_users(Source([item(1), item(2)]), directory, e164=E164, now=NOW)
        report = await sync_users(Source([item(1)]), directory, e164=E164, now=NOW)
        assert report.deactivated == 1
        assert not directory.rows[2].active
        assert directory.rows[1].active

    async def test_fired_users_are_stored_inactive(self) -> None:
        directory = Directory()
        report = await sync_users(
            Source([item(1), item(4, ACTIVE=False)]), directory, e164=E164, now=NOW
        )
        assert (report.seen, report.fired, report.active) == (2, 1, 1)
        assert not directory.rows[4].active

    async def test_a_failed_read_writes_nothing(self) -> None:
        class Broken:
            async def users(self) -> AsyncIterator[Mapping[str, Any]]:
                yield item(1)
                raise RuntimeError("page 2 failed")

        directory = Directory({2: StoredUser(2, "U2", True, "102", None)})
        try:
            await sync_users(Broken(), directory, e164=E164, now=NOW)
        except RuntimeError:
            pass
        assert directory.rows == {2: StoredUser(2, "U2", True, "102", None)}


class TestOverrides:
    def test_malformed_overrides_are_skipped(self) -> None:
        settings = {"extension_users": {"201": 5, " 202 ": "3", "203": "x", "204": 0}}
        assert extension_overrides(settings) == {"201": 5, "202": 3}
        assert extension_overrides({"extension_users": ["bad"]}) == {}

    def test_override_wins_over_the_synced_extension(self) -> None:
        synced = [
            StoredUser(1, "Ivan", True, "101", None),
            StoredUser(2, "Maria", True, "102", None),
            StoredUser(4, "Olga", False, "104", None),
            StoredUser(5, "Dmitry", True, None, "+79161234567"),
        ]
        table = extensions_by_user(synced, {"102": 5})
        # 102 now reaches Dmitry; Maria's synced 102 no longer points at her.
        assert table == {1: "101", 5: "102"}
