"""Zero lost calls through a Bitrix24 outage mid-storm and a SIGKILL of the worker.

Real processes (``tests/e2e/processes.py``): the emulator (``python -m bitrix24_emulator``),
``callbridge serve`` and ``callbridge worker`` on one database (a fresh SQLite file, or a fresh
PostgreSQL database with ``--postgres``), configured through ``CALLBRIDGE_*`` variables. Callbridge
reaches the portal through a TCP proxy in this process.

Scenario: N calls over S seconds (each ringing 1-3 employees, 70 % answered). At S/3 the portal
goes down for 60 s: the proxy stops listening (connections refused) and cuts every open
connection, at the moment the answer to a request the portal has already processed is on its way.
At 2S/3 the worker is SIGKILLed at the same kind of moment and restarted a few seconds later.
Then the queue drains. Prints calls sent vs registered and finished with the right status
(answered 200, missed 304), ``lost``, ``duplicates`` (calls registered twice), registers re-sent,
dead jobs, 503s and the time to drain after recovery.

``--outage-kind 503|reset|timeout|500|502`` uses the emulator's own fault window instead of the
proxy (every REST/OAuth request gets that answer). The job lease is production's 60 s unless
``--lease-seconds`` says otherwise: the killed worker's jobs wait for it to run out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.e2e.processes import (  # noqa: E402
    Report,
    Scenario,
    postgres_database,
    run_outage,
    stack,
)

DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=240.0, help="storm length S")
    parser.add_argument("--outage-seconds", type=float, default=60.0)
    parser.add_argument(
        "--outage-kind",
        default="refuse",
        choices=["refuse", "503", "reset", "timeout", "500", "502"],
        help="refuse: the port refuses connections (default); else an emulator fault window",
    )
    parser.add_argument("--restart-after", type=float, default=3.0, help="worker down, s")
    parser.add_argument("--lease-seconds", type=float, default=60.0, help="job lease")
    parser.add_argument("--latency-ms", type=float, default=40.0, help="portal latency (mean)")
    parser.add_argument("--plan", default="standard", choices=["standard", "enterprise"])
    parser.add_argument(
        "--postgres",
        nargs="?",
        const=os.environ.get("CALLBRIDGE_TEST_POSTGRES_URL") or DEFAULT_POSTGRES,
        default=None,
        metavar="URL",
        help="run on a fresh PostgreSQL database on this server (default: SQLite)",
    )
    parser.add_argument("--quick", action="store_true", help="60 calls, 24 s, a 10-s outage")
    args = parser.parse_args()
    if args.quick:
        scenario = Scenario(
            calls=60,
            seconds=24,
            outage_at=4,
            outage_seconds=10,
            outage_kind=args.outage_kind,
            kill_at=16,
            restart_after=2,
        )
    else:
        scenario = Scenario(
            calls=args.calls,
            seconds=args.seconds,
            outage_at=args.seconds / 3,
            outage_seconds=args.outage_seconds,
            outage_kind=args.outage_kind,
            kill_at=2 * args.seconds / 3,
            restart_after=args.restart_after,
            drain_timeout=max(300.0, 4 * args.lease_seconds),
        )
    with tempfile.TemporaryDirectory(prefix="callbridge-outage-") as tmp_name:
        tmp = Path(tmp_name)
        if args.postgres:
            async with postgres_database(args.postgres) as url:
                report = await _run(url, tmp, scenario, args)
            backend = "PostgreSQL"
        else:
            url = f"sqlite+aiosqlite:///{tmp / 'outage.db'}"
            report = await _run(url, tmp, scenario, args)
            backend = "SQLite"
    print(f"outage benchmark on {backend} (web app and worker as separate processes)")
    for line in report.lines():
        print(f"  {line}")
    for dead in report.dead_jobs:
        print(f"  dead: {dead}")
    ok = report.lost == 0 and report.duplicates == 0 and not report.dead_jobs
    return 0 if ok and not report.stuck_jobs else 1


async def _run(url: str, tmp: Path, scenario: Scenario, args: argparse.Namespace) -> Report:
    async with stack(
        url,
        tmp / "run",
        lease_seconds=args.lease_seconds,
        latency_ms=args.latency_ms,
        plan=args.plan,
    ) as s:
        return await run_outage(s, scenario)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
