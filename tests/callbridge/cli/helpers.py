"""What the subcommands' tests share: a sub-app invoked as the main app mounts it, and a
session on the database the command uses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import typer
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner, Result

from callbridge.config import Settings
from callbridge.storage.db import create_engine, create_session_factory
from callbridge.storage.models import Bitrix24Integration, Enterprise
from callbridge.storage.repositories import EnterpriseRepository


def invoker(sub_app: typer.Typer, name: str, settings: Settings) -> Callable[..., Result]:
    """Run ``callbridge <name> ARGS...`` with ``settings`` in ``ctx.obj``, as the main app does."""
    app = typer.Typer()
    app.add_typer(sub_app, name=name)

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(app, [name, *args], obj=settings)

    return invoke


@asynccontextmanager
async def session_on(settings: Settings) -> AsyncIterator[AsyncSession]:
    """A session on the settings' database, through an engine of its own (disposed after)."""
    engine = create_engine(settings.effective_database_url)
    try:
        async with create_session_factory(engine)() as session:
            yield session
    finally:
        await engine.dispose()


async def the_integration(session: AsyncSession) -> Row[Any]:
    """The one stored integration's row."""
    row = (await session.execute(Bitrix24Integration.__table__.select())).first()
    assert row is not None
    return row


def integration_setting(settings: Settings, name: str) -> Any:
    """One of the stored integration's settings, as the command left it."""

    async def read() -> Any:
        async with session_on(settings) as session:
            return (await the_integration(session)).settings.get(name)

    return asyncio.run(read())


def stored_enterprise(settings: Settings, number: str) -> Enterprise:
    """The stored enterprise with this number, as the command left it."""

    async def read() -> Enterprise:
        async with session_on(settings) as session:
            row = await EnterpriseRepository(session).by_number(number)
            assert row is not None
            return row

    return asyncio.run(read())
