"""`callbridge emulator`: start the Bitrix24 emulator (tests, demos, benchmarks).

The emulator is a sibling package that callbridge never imports: this command replaces the
current process with ``python -m bitrix24_emulator`` and passes every argument through.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import typer

EMULATOR_MODULE = "bitrix24_emulator"


def emulator_command(ctx: typer.Context) -> None:
    """Start the Bitrix24 emulator; options as `python -m bitrix24_emulator --help`."""
    if importlib.util.find_spec(EMULATOR_MODULE) is None:
        typer.echo(
            "Error: the bitrix24_emulator package is not installed; run `make install`",
            err=True,
        )
        raise typer.Exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", EMULATOR_MODULE, *ctx.args])
