"""``callbridge enterprise set-ami`` and ``status``: the secret is stored encrypted, never shown."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import Result

import callbridge.cli.enterprise_ami  # noqa: F401 - registers set-ami and status
from callbridge.cli.enterprise import enterprise_app
from callbridge.config import Settings
from callbridge.storage.ami import AmiStatusRepository, StatusUpdate
from callbridge.storage.crypto import SecretBox
from callbridge.storage.models import Bitrix24Integration
from callbridge.storage.repositories import EnterpriseRepository
from callbridge.storage.types import utcnow
from tests.callbridge.cli.helpers import invoker, session_on, stored_enterprise
from tests.callbridge.web.test_app import make_settings

URL = "ami://crm:s3cret-pass@pbx.example:5038"


def cli(settings: Settings) -> Callable[..., Result]:
    return invoker(enterprise_app, "enterprise", settings)


def stored_url(settings: Settings, number: str) -> str | None:
    row = stored_enterprise(settings, number)
    return SecretBox(settings.fernet_keys()).decrypt_optional(row.ami_url_enc)


def report(settings: Settings, number: str, update: StatusUpdate, *, age: float = 0) -> None:
    async def write() -> None:
        async with session_on(settings) as session, session.begin():
            row = await EnterpriseRepository(session).by_number(number)
            assert row is not None
            repo = AmiStatusRepository(session)
            await repo.report(row.id, update)
            if age:
                status = (await repo.by_enterprise())[row.id]
                status.updated_at = utcnow() - timedelta(seconds=age)

    asyncio.run(write())


def link_portal(settings: Settings, number: str, domain: str) -> None:
    async def write() -> None:
        async with session_on(settings) as session, session.begin():
            row = await EnterpriseRepository(session).by_number(number)
            assert row is not None
            session.add(
                Bitrix24Integration(
                    enterprise_id=row.id,
                    member_id=f"m-{domain}",
                    domain=domain,
                    client_endpoint=f"https://{domain}/rest/",
                )
            )

    asyncio.run(write())


def status(state: str, error: str | None = None) -> StatusUpdate:
    return StatusUpdate(
        state=state,
        pbx="pbx.example:5038",
        holder="host:123",
        last_error=error,
        reconnects=2,
        events_in=1234,
        last_event_at=utcnow() if state == "connected" else None,
        since=utcnow(),
    )


@pytest.fixture
def settings(fresh_database_url: str, tmp_path: Path) -> Settings:
    return make_settings(tmp_path, fresh_database_url)


class TestSetAmi:
    def test_stores_the_url_encrypted_and_prints_it_masked(self, settings: Settings) -> None:
        run = cli(settings)
        assert run("add", "100").exit_code == 0
        result = run("set-ami", "100", URL)
        assert result.exit_code == 0, result.output
        assert "ami://crm:***@pbx.example:5038" in result.output
        assert "s3cret-pass" not in result.output
        assert stored_url(settings, "100") == URL

    def test_remove(self, settings: Settings) -> None:
        run = cli(settings)
        run("add", "100")
        run("set-ami", "100", URL)
        result = run("set-ami", "100", "--remove")
        assert result.exit_code == 0, result.output
        assert stored_url(settings, "100") is None

    @pytest.mark.parametrize(
        ("url", "says"),
        [
            ("http://crm:x@pbx:5038", "ami://"),
            ("ami://pbx.example:5038", "user and its secret"),
            ("ami://crm:x@pbx:70000", "invalid AMI URL"),
        ],
    )
    def test_an_invalid_url_is_refused_with_the_form(
        self, settings: Settings, url: str, says: str
    ) -> None:
        run = cli(settings)
        run("add", "100")
        result = run("set-ami", "100", url)
        assert result.exit_code == 1
        assert says in result.output
        assert "ami://user:secret@host:5038" in result.output
        assert stored_url(settings, "100") is None

    def test_unknown_enterprise(self, settings: Settings) -> None:
        result = cli(settings)("set-ami", "404", URL)
        assert result.exit_code == 1
        assert "no enterprise 404" in result.output

    def test_url_or_remove(self, settings: Settings) -> None:
        result = cli(settings)("set-ami", "100")
        assert result.exit_code == 1
        assert "--remove" in result.output


class TestStatus:
    def test_every_enterprise_with_its_ami_webhook_and_portals(self, settings: Settings) -> None:
        run = cli(settings)
        run("add", "100", "--name", "Acme")
        run("add", "200")
        run("add", "300")
        run("set-ami", "100", URL)
        run("set-ami", "200", "ami://crm:x@10.0.0.9:5038")
        link_portal(settings, "100", "acme.bitrix24.ru")
        report(settings, "100", status("connected"))
        report(
            settings,
            "200",
            status("unreachable", "cannot connect to the AMI at 10.0.0.9:5038: refused"),
        )
        result = run("status")
        assert result.exit_code == 0, result.output
        out = result.output
        assert re.search(r"100\s+connected\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+yes\s+acme", out), out
        assert re.search(r"200\s+unreachable\s+-\s+yes\s+none linked", out), out
        assert re.search(r"300\s+not configured\s+-\s+yes", out), out
        assert "last error: cannot connect to the AMI at 10.0.0.9:5038: refused" in out
        assert "1234 events, 2 reconnects" in out
        assert "held by host:123" in out
        assert "s3cret-pass" not in out
        assert "ami://crm:***@pbx.example:5038" in out

    def test_a_listener_that_stopped_reporting_is_stale(self, settings: Settings) -> None:
        run = cli(settings)
        run("add", "100")
        run("set-ami", "100", URL)
        report(settings, "100", status("connected"), age=600)
        result = run("status")
        assert re.search(r"100\s+stale \(connected\)", result.output), result.output

    def test_configured_but_not_started(self, settings: Settings) -> None:
        run = cli(settings)
        run("add", "100")
        run("set-ami", "100", URL)
        result = run("status")
        assert re.search(r"100\s+not started", result.output), result.output

    def test_no_enterprises(self, settings: Settings) -> None:
        result = cli(settings)("status")
        assert result.exit_code == 0
        assert "no enterprises" in result.output
