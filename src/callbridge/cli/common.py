"""What the ``callbridge`` subcommands share: their settings and how an error ends them.

An error a command expects (a :class:`~callbridge.domain.errors.CallbridgeError`, or the
database's) prints one line on stderr and exits with status 1, without a traceback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, NoReturn, TypeVar

import typer
from sqlalchemy.exc import SQLAlchemyError

from callbridge.config import Settings, load_settings
from callbridge.domain.errors import CallbridgeError

T = TypeVar("T")
C = TypeVar("C")


def settings_from(ctx: typer.Context) -> Settings:
    """The settings the main app put in ``ctx.obj``, or the environment's when run alone."""
    obj = ctx.find_object(Settings)
    return obj if obj is not None else load_settings()


def fail(message: str) -> NoReturn:
    """Print ``Error: message`` on one line of stderr and exit with status 1."""
    typer.echo(f"Error: {' '.join(message.split())}", err=True)
    raise typer.Exit(1)


def run_or_fail(main: Coroutine[Any, Any, T], on_error: Callable[[str], NoReturn] = fail) -> T:
    """Run ``main``; a callbridge or database error goes to ``on_error`` as one message."""
    try:
        return asyncio.run(main)
    except CallbridgeError as err:
        on_error(err.message)
    except SQLAlchemyError as err:
        detail = str(getattr(err, "orig", None) or err).splitlines()[0]
        on_error(f"database error: {detail} (is the database reachable and migrated?)")


def run_in(
    ctx: typer.Context,
    open_context: Callable[[Settings], AbstractAsyncContextManager[C]],
    action: Callable[[C], Awaitable[T]],
) -> T:
    """Run ``action`` in the context opened on the command's settings, as :func:`run_or_fail`."""

    async def main() -> T:
        async with open_context(settings_from(ctx)) as context:
            return await action(context)

    return run_or_fail(main())
