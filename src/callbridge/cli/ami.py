"""``callbridge ami-replay``: serve recorded AMI streams over TCP, as a PBX would.

Register with ``app.add_typer(ami_replay_command, name="ami-replay")``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Annotated

import typer

from callbridge.pbx.ami.replay import DEFAULT_USERS, serve

ami_replay_command = typer.Typer(
    name="ami-replay",
    help="Serve recorded AMI streams (.ami files) to AMI clients over TCP.",
    add_completion=False,
    subcommand_metavar="",
    context_settings={"help_option_names": ["-h", "--help"], "allow_interspersed_args": True},
)


def _parse_users(values: list[str]) -> dict[str, str]:
    users: dict[str, str] = {}
    for value in values:
        username, sep, secret = value.partition(":")
        if not sep or not username:
            raise typer.BadParameter(f"{value!r} is not USER:SECRET", param_hint="--user")
        users[username] = secret
    return users


@ami_replay_command.callback(invoke_without_command=True)
def ami_replay(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Recorded .ami files, played in this order (timing from FILE.timing.tsv).",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port to listen on (Asterisk's is 5038).")] = 5038,
    speed: Annotated[
        float, typer.Option(min=0.0, help="1.0 = recorded pace, 2.0 = twice as fast, 0 = no waits.")
    ] = 1.0,
    loop: Annotated[
        bool, typer.Option("--loop/--once", help="Start over after the last file, or stop there.")
    ] = False,
    timestamps: Annotated[
        bool,
        typer.Option(
            "--timestamps", help="Add Timestamp: headers from the recorded timing to each event."
        ),
    ] = False,
    rebase: Annotated[
        bool,
        typer.Option(
            "--rebase", help="Move ids and timestamps to now on every pass (repeats always move)."
        ),
    ] = False,
    user: Annotated[
        list[str] | None,
        typer.Option(help="USER:SECRET accepted by Login (repeatable). Default: crm and ctl."),
    ] = None,
    originate_file: Annotated[
        Path | None,
        typer.Option(help="Recording to play when a client sends Originate.", exists=True),
    ] = None,
) -> None:
    """Serve recorded AMI streams until Ctrl-C."""
    users = _parse_users(user) if user else dict(DEFAULT_USERS)
    typer.echo(
        f"AMI replay on {host}:{port} ({len(files)} file(s), speed {speed:g}, "
        f"{'loop' if loop else 'once'}); log in as {', '.join(sorted(users))}. Ctrl-C stops.",
        err=True,
    )

    async def run() -> None:
        task = asyncio.create_task(
            serve(
                files,
                host,
                port,
                speed,
                loop,
                timestamps,
                rebase=rebase,
                users=users,
                originate_file=originate_file,
            )
        )
        # `make run` stops its children with SIGTERM: close connections cleanly as on Ctrl-C.
        with contextlib.suppress(NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
