"""Call storm against the emulated portal's standard plan (bucket 50, 2 requests/s).

PBX webhook → call tracking → dispatcher → emulator, all in one process over ASGI, on SQLite
(or ``--database-url``). Prints:

1. storm: N calls over S seconds (each ringing 1-3 users, answered or missed): lag from the last
   PBX event to the last call finished in Bitrix24, p50/p99 from ``call.started`` to its register
   accepted, requests and commands, commands per request, 503s, calls lost;
2. latency: 1 call/s; p99 from ``call.started`` to register accepted; the same at 20 calls/s,
   where the plan's 2 requests/s bound it (each request waits ~500 ms for its slot);
3. sustained: a backlog (as after an outage) drained batched and unbatched; commands/s accepted
   once the bucket's first burst is spent, and ``ratio: N``.

``--quick`` scales everything down (about 1.5 minutes); the full run takes about four.
``--part storm|latency|sustained`` runs one part (``--seconds`` sets part 2's length). The
dispatcher polls at the setting's default (``--poll-interval``): in-process commits wake it, as
in production; the tests' short poll would add a look-up transaction every 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from sqlalchemy import text, update  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from tests.e2e.processes import KNOWN_CALLER, pbx_call  # noqa: E402
from tests.e2e.test_calls_e2e import ENTERPRISE, TOKEN, Env, environment  # noqa: E402

from callbridge.config import Settings  # noqa: E402
from callbridge.storage import migrate  # noqa: E402
from callbridge.storage.db import create_unpooled_engine, is_sqlite_url  # noqa: E402
from callbridge.storage.models import Bitrix24Integration, IntegrationStatus  # noqa: E402

WARM_SECONDS = 15.0
#: The dispatcher's poll interval (``--poll-interval``): the setting's default, as in production.
POLL_INTERVAL = Settings.model_fields["worker_poll_interval_seconds"].default


async def post(env: Env, events: list[dict[str, Any]]) -> None:
    response = await env.h.callbridge_http.post(
        f"/pbx/{ENTERPRISE}/events", json=events, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    if response.status_code != 202:
        raise RuntimeError(f"webhook answered {response.status_code}: {response.text}")


async def play(env: Env, schedule: list[tuple[float, dict[str, Any]]]) -> dict[str, float]:
    """Send events at their times; returns when each call.started went out, by linkedid."""
    schedule.sort(key=lambda item: item[0])
    started: dict[str, float] = {}
    pending: set[asyncio.Task[None]] = set()
    for when, event in schedule:
        delay = when - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if event["type"] == "call.started":
            started[event["call_id"]] = time.time()
        task = asyncio.create_task(post(env, [event]))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    return started


async def portal_calls(env: Env) -> dict[str, dict[str, Any]]:
    return await env.calls()


async def requests(env: Env) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    since = 0
    while True:
        response = await env.h.emulator_http.get(
            "/_emulator/requests", params={"limit": 10_000, "since_id": since}
        )
        page = response.json()
        seen += page
        if len(page) < 10_000:
            break
        since = page[-1]["id"]
    return [r for r in seen if str(r.get("path", "/rest")).startswith("/rest")]


def commands_in(request: dict[str, Any]) -> int:
    if request.get("method") == "batch":
        return sum(1 for sub in request.get("batch") or [] if not sub.get("error"))
    return 1 if request.get("status") == 200 else 0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def register_latencies(env: Env, started: dict[str, float]) -> list[float]:
    """Per call, in the order the calls started."""
    calls = await portal_calls(env)
    out = []
    for linkedid, sent in sorted(started.items(), key=lambda item: item[1]):
        call = calls.get(f"{linkedid}-0")
        if call is not None:
            out.append((call["registered_at"] - sent) * 1000)
    return out


async def dispatch_latencies(env: Env) -> list[float]:
    """From each register job's enqueue (just before its commit) to the portal accepting it."""
    calls = await portal_calls(env)
    out = []
    for job in await env.jobs():
        if (job.payload.get("command") or {}).get("kind") != "register":
            continue
        call = calls.get(f"{job.payload['linkedid']}-{job.payload['leg']}")
        if call is not None:
            enqueued = job.created_at.replace(tzinfo=job.created_at.tzinfo or UTC).timestamp()
            out.append((call["registered_at"] - enqueued) * 1000)
    return out


async def storm(url: str, tmp: Path, calls: int, seconds: float) -> None:
    async with environment(url, tmp, poll_interval=POLL_INTERVAL) as env:
        rng = random.Random(5)
        begin = time.time() + 0.5
        schedule: list[tuple[float, dict[str, Any]]] = []
        for n in range(calls):
            schedule += pbx_call(f"storm.{n}", begin + rng.uniform(0, seconds), rng).events
        last_event = max(when for when, _ in schedule)
        before = len(await requests(env))
        started = await play(env, schedule)
        await env.settle(120)
        portal = await portal_calls(env)
        finished = [
            c for k, c in portal.items() if k.startswith("storm.") and c["state"] == "finished"
        ]
        lost = calls - len(finished)
        lag = max((c["finished_at"] for c in finished), default=last_event) - last_event
        sent = (await requests(env))[before:]
        latencies = await register_latencies(env, started)
        dispatch = await dispatch_latencies(env)
        commands = sum(commands_in(r) for r in sent)
        print(f"1. storm: {calls} calls over {seconds:.0f} s, standard plan (50, 2/s)")
        print(f"   lag (last PBX event → last call finished): {lag:.2f} s")
        print(
            f"   call.started → register accepted: p50 {pct(latencies, 0.5):.0f} ms, "
            f"p99 {pct(latencies, 0.99):.0f} ms"
        )
        print(
            f"   of which register job committed → accepted: p50 {pct(dispatch, 0.5):.0f} ms, "
            f"p99 {pct(dispatch, 0.99):.0f} ms"
        )
        print(
            f"   requests {len(sent)}, commands {commands}, "
            f"commands/request {commands / max(1, len(sent)):.1f}"
        )
        print(f"   503s {sum(1 for r in sent if r.get('status') == 503)}, lost {lost}")


async def latency(url: str, tmp: Path, seconds: int, per_second: int = 1) -> None:
    async with environment(url, tmp, poll_interval=POLL_INTERVAL) as env:
        rng = random.Random(7)
        begin = time.time() + 0.5
        schedule: list[tuple[float, dict[str, Any]]] = []
        for n in range(seconds * per_second):
            schedule += pbx_call(f"lat.{n}", begin + n / per_second, rng).events
        before = len(await requests(env))
        started = await play(env, schedule)
        await env.settle(120)
        latencies = await register_latencies(env, started)
        dispatch = await dispatch_latencies(env)
        sent = (await requests(env))[before:]
        if per_second == 1:
            print(f"2. latency: 1 call/s for {seconds} s")
        else:
            # Each call needs its register and its show at once: past about one call/s the
            # 2 requests/s of the plan, not the dispatcher, set the pace (~500 ms a request).
            print(f"   at {per_second} calls/s for {seconds} s (bounded by the 2 requests/s plan):")
        print(
            f"   call.started → register accepted: p50 {pct(latencies, 0.5):.1f} ms, "
            f"p99 {pct(latencies, 0.99):.1f} ms, max {max(latencies):.1f} ms "
            f"({len(latencies)} calls, {len(sent)} requests, "
            f"503s {sum(1 for r in sent if r.get('status') == 503)})"
        )
        print(
            f"   of which register job committed → accepted (the dispatcher's part): "
            f"p50 {pct(dispatch, 0.5):.1f} ms, p99 {pct(dispatch, 0.99):.1f} ms"
        )
        if per_second == 1 and len(latencies) > 1:
            # The first call after a start pays for whatever is still cold.
            print(
                f"   the first call {latencies[0]:.1f} ms; the others: "
                f"p99 {pct(latencies[1:], 0.99):.1f} ms, max {max(latencies[1:]):.1f} ms"
            )


async def _burst_spent(env: Env, until: float) -> float | None:
    """Watch the portal's bucket until ``until``; when it first got (within a request of) its
    fullest: the burst spent from then on. None if nothing was sent."""
    samples: list[tuple[float, float]] = []
    while time.time() < until:
        stats = (await env.h.emulator_http.get("/_emulator/stats")).json()
        samples.append((time.time(), max(stats["rate_buckets"].values(), default=0.0)))
        await asyncio.sleep(min(0.2, max(0.0, until - time.time())))
    fullest = max((level for _, level in samples), default=0.0)
    if fullest < 1:
        return None
    return next(at for at, level in samples if level >= fullest - 1)


async def _set_status(env: Env, status: str) -> None:
    async with env.h.session_factory() as session, session.begin():
        await session.execute(update(Bitrix24Integration).values(status=status))


async def sustained(url: str, tmp: Path, calls: int, seconds: float, batching: bool) -> float:
    async with environment(url, tmp, batching=batching, poll_interval=POLL_INTERVAL) as env:
        # Paused while the backlog builds, as during an outage.
        await _set_status(env, IntegrationStatus.NEEDS_REAUTH.value)
        when = datetime.now(UTC) - timedelta(minutes=5)
        chunk: list[dict[str, Any]] = []
        for n in range(calls):
            linkedid = f"backlog.{n}"
            chunk += [
                {
                    "type": "call.started",
                    "call_id": linkedid,
                    "event_id": f"{linkedid}-0",
                    "timestamp": when.isoformat(),
                    "direction": "inbound",
                    "external_number": KNOWN_CALLER,
                },
                {
                    "type": "call.ended",
                    "call_id": linkedid,
                    "event_id": f"{linkedid}-1",
                    "timestamp": (when + timedelta(seconds=20)).isoformat(),
                    "disposition": "no_answer",
                },
            ]
            if len(chunk) >= 500:
                await post(env, chunk)
                chunk = []
        if chunk:
            await post(env, chunk)
        before = len(await requests(env))
        await _set_status(env, IntegrationStatus.ACTIVE.value)
        env.dispatcher.wake()
        begin = time.time()
        spent_at = await _burst_spent(env, begin + seconds)
        sent = (await requests(env))[before:]
        # The bucket's first burst is a one-off: the sustained rate is measured once it is
        # spent, i.e. from when the portal's bucket was first at its fullest (after that it
        # drains as fast as requests come). The dispatcher spends the burst at its own pace
        # (50-command batches take a while to build), so a fixed warm-up could count part of it.
        start = spent_at if spent_at is not None else begin + WARM_SECONDS
        ok = [r for r in sent if r.get("status") == 200 and r["time"] >= start]
        ok.sort(key=lambda r: r["time"])
        span = ok[-1]["time"] - ok[0]["time"] if len(ok) > 1 else 0.0
        rate = sum(commands_in(r) for r in ok[1:]) / span if span > 0 else float("nan")
        total = sum(commands_in(r) for r in sent)
        mode = "batched" if batching else "unbatched"
        spent = (
            f"bucket at its fullest {start - begin:.0f} s in"
            if spent_at is not None
            else f"nothing sent: from {WARM_SECONDS:.0f} s in"
        )
        print(f"   {mode:9}: {rate:6.1f} commands/s after the burst ({spent})")
        print(
            f"   {'':9}  {total} commands in {len(sent)} requests over {seconds:.0f} s, "
            f"503s {sum(1 for r in sent if r.get('status') == 503)}"
        )
        return rate


async def main() -> None:
    global POLL_INTERVAL  # one knob for every part
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a scaled-down run")
    parser.add_argument(
        "--database-url",
        default="",
        help="default: a fresh SQLite file per part; a PostgreSQL server URL: a new database "
        "on it per part",
    )
    parser.add_argument(
        "--part",
        choices=["all", "storm", "latency", "sustained"],
        default="all",
        help="run only this part (default: all three)",
    )
    parser.add_argument(
        "--seconds", type=int, default=0, help="part 2: seconds at 1 call/s (default: 60, quick 10)"
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=POLL_INTERVAL,
        help=f"the dispatcher's poll interval (default: {POLL_INTERVAL:g} s, the setting's)",
    )
    args = parser.parse_args()
    POLL_INTERVAL = args.poll_interval
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        counter = 0

        made: list[str] = []

        async def fresh() -> str:
            nonlocal counter
            counter += 1
            if args.database_url and is_sqlite_url(args.database_url):
                return str(args.database_url)
            if args.database_url:
                # A PostgreSQL server: a new database per part, dropped at the end.
                name = f"storm_{uuid.uuid4().hex[:12]}"
                await _pg_admin(args.database_url, f'CREATE DATABASE "{name}"')
                url = make_url(args.database_url).set(database=name)
                made.append(name)
                url_text = url.render_as_string(hide_password=False)
                await migrate.upgrade(url_text)
                return url_text
            url_text = f"sqlite+aiosqlite:///{tmp / f'storm{counter}.db'}"
            await migrate.upgrade(url_text)
            return url_text

        quick = args.quick
        if args.part in ("all", "storm"):
            await storm(await fresh(), tmp, *((100, 12) if quick else (500, 60)))
        if args.part in ("all", "latency"):
            await latency(await fresh(), tmp, args.seconds or (10 if quick else 60))
            await latency(await fresh(), tmp, 5 if quick else 15, per_second=20)
        if args.part in ("all", "sustained"):
            calls, seconds = (2500, 25) if quick else (3000, 45)
            print(
                f"3. sustained: backlog of {calls:,} calls ({2 * calls:,} commands), "
                f"{seconds} s each mode"
            )
            batched = await sustained(await fresh(), tmp, calls, seconds, True)
            unbatched = await sustained(await fresh(), tmp, calls, seconds, False)
            print(f"   ratio: {batched / unbatched if unbatched else float('inf'):.0f}")
        for name in made:
            await _pg_admin(args.database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _pg_admin(url: str, sql: str) -> None:
    engine = create_unpooled_engine(url)
    try:
        async with engine.connect() as connection:
            connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text(sql))
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
