"""Users sync and missed-call notifications against the emulator (over ASGI)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from callbridge.directory import notify_missed_call, sync_due_integrations, sync_integration_users
from callbridge.storage.call_tracking import policy_from_settings
from callbridge.storage.models import Bitrix24User
from callbridge.storage.repositories import IntegrationRepository
from tests.callbridge.crm.bitrix24.harness import Harness, installed_harness


@pytest.fixture
async def h(fresh_database_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with installed_harness(fresh_database_url, tmp_path) as both:
        yield both


async def integration_id(h: Harness) -> int:
    row = await h.integration()
    assert row is not None
    return row.id


async def users(h: Harness) -> dict[int, Bitrix24User]:
    async with h.session_factory() as session:
        rows = (await session.scalars(select(Bitrix24User))).all()
    return {row.user_id: row for row in rows}


async def set_settings(h: Harness, **values: object) -> None:
    async with h.session_factory() as session, session.begin():
        repo = IntegrationRepository(session, h.box)
        row = await repo.by_member_id(h.emulator.portal.member_id)
        assert row is not None
        row.settings = {**(row.settings or {}), **values}


class TestUsersSync:
    async def test_seeded_portal(self, h: Harness) -> None:
        report = await sync_integration_users(h.portals, await integration_id(h))
        assert (report.seen, report.added, report.fired) == (5, 5, 1)
        rows = await users(h)
        assert sorted(uid for uid, row in rows.items() if row.active) == [1, 2, 3, 5]
        assert rows[4].active is False  # fired on the portal
        assert rows[2].extension == "102"
        assert rows[2].mobile == "+79162000002"
        assert rows[5].extension is None  # mobile-only
        assert rows[5].mobile == "+79161234567"

    async def test_fired_and_removed_users_are_deactivated(self, h: Harness) -> None:
        iid = await integration_id(h)
        await sync_integration_users(h.portals, iid)
        fired = h.emulator.portal.users.get(2)
        assert fired is not None
        h.emulator.portal.users.add({**fired, "ACTIVE": False})
        report = await sync_integration_users(h.portals, iid)
        assert report.updated == 1
        rows = await users(h)
        assert rows[2].active is False
        assert rows[2].extension == "102"  # kept: old calls still name the user

    async def test_pages_over_more_than_fifty_users(self, h: Harness) -> None:
        for n in range(60):
            h.emulator.portal.users.add(
                {"ID": 100 + n, "NAME": f"E{n}", "UF_PHONE_INNER": str(200 + n)}
            )
        report = await sync_integration_users(h.portals, await integration_id(h))
        assert report.seen == 65
        rows = await users(h)
        assert rows[159].extension == "259"
        assert len(await h.requests("user.get")) == 2

    async def test_manual_override_wins_over_synced_extension(self, h: Harness) -> None:
        iid = await integration_id(h)
        await set_settings(h, extension_users={"102": 3})
        await sync_integration_users(h.portals, iid)
        row = await h.integration()
        assert row is not None
        policy = policy_from_settings(row.settings, list((await users(h)).values()))
        assert policy.user_for_extension("102") == 3
        assert policy.user_for_number("8 916 123-45-67") == 5

    async def test_sync_runs_only_when_due(self, h: Harness) -> None:
        first = await sync_due_integrations(h.portals)
        assert list(first) == [await integration_id(h)]
        assert await sync_due_integrations(h.portals) == {}


class TestNotifyMissed:
    PAYLOAD = {
        "enterprise_id": 1,
        "linkedid": "1700000000.1",
        "user_id": 2,
        "phone_number": "+74951234567",
        "line": "74951110101",
    }

    async def notifications(self, h: Harness) -> list[dict[str, object]]:
        response = await h.emulator_http.get("/_emulator/notifications")
        return response.json()  # type: ignore[no-any-return]

    async def test_responsible_user_is_notified_in_russian(self, h: Harness) -> None:
        done = await notify_missed_call(h.portals, await integration_id(h), self.PAYLOAD)
        assert done["user_id"] == 2
        (note,) = await self.notifications(h)
        assert note["USER_ID"] == 2
        assert note["MESSAGE"] == "Пропущенный звонок от +74951234567 на линию 74951110101"

    async def test_english_portal(self, h: Harness) -> None:
        await set_settings(h, language="en")
        await notify_missed_call(h.portals, await integration_id(h), self.PAYLOAD)
        (note,) = await self.notifications(h)
        assert note["MESSAGE"] == "Missed call from +74951234567 on line 74951110101"

    async def test_setting_off_sends_nothing(self, h: Harness) -> None:
        await set_settings(h, notify_missed_calls=False)
        done = await notify_missed_call(h.portals, await integration_id(h), self.PAYLOAD)
        assert "skipped" in done
        assert await self.notifications(h) == []
