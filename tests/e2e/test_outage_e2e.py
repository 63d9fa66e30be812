"""No call is lost or registered twice when the portal goes away mid-storm and the worker is killed.

Real processes (see ``tests/e2e/processes.py``): the emulator, ``callbridge serve`` and
``callbridge worker`` on one database. 60 calls over 24 s; at 4 s the portal's port refuses
connections for 10 s (open connections cut, a request in flight among them); at 16 s the worker
is SIGKILLed while a request is in flight, and a new one starts 2 s later. ``benchmarks/outage.py``
is the full-size run (60-s outage) and prints the same counts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Database
from tests.e2e.processes import Scenario, dump, run_outage, stack

pytestmark = pytest.mark.slow


async def test_no_call_is_lost_or_registered_twice(
    database: Database, fresh_database_url: str, tmp_path: Path
) -> None:
    scenario = Scenario(
        calls=60, seconds=24, outage_at=4, outage_seconds=10, kill_at=16, restart_after=2
    )
    async with stack(fresh_database_url, tmp_path, lease_seconds=5, latency_ms=40) as s:
        report = await run_outage(s, scenario)
        print("\n".join(report.lines()))
        detail = f"{dump(report)}\n{s.logs()}"
        assert report.sent == scenario.calls, detail
        assert report.stuck_jobs == 0, detail
        assert report.dead_jobs == [], detail
        assert report.lost == 0, detail
        assert report.duplicates == 0, detail
        assert report.finished_right == scenario.calls, detail
        # The scenario really happened: the outage cut a request, the kill hit one in flight.
        assert report.outage_cut_answer, detail
        assert report.killed_mid_request, detail
