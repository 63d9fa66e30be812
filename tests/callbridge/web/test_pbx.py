"""``POST /pbx/{enterprise}/events`` over ASGI, with the app's lifespan, on both databases."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from callbridge.domain.errors import RetryLater
from callbridge.domain.events import Event
from callbridge.pbx.webhook import MAX_EVENTS_PER_REQUEST, sign
from callbridge.services.call_tracking import Outcome
from callbridge.storage.crypto import SecretBox
from callbridge.storage.db import create_engine, create_session_factory
from callbridge.storage.models import (
    Bitrix24Integration,
    Bitrix24User,
    Enterprise,
    Job,
    PbxEvent,
)
from callbridge.storage.models import Call as CallRow
from callbridge.web.app import create_app
from callbridge.web.deps import get_settings
from callbridge.web.intake import IntakeWriter
from callbridge.web.pbx import CachedVerifiedEnterprise
from tests.callbridge.web.test_app import make_settings, serve
from tests.callbridge.web.test_intake import writes_held
from tests.conftest import Database

TOKEN = "pbx-token-0123456789abcdef"
NUMBER = "100"
URL = f"/pbx/{NUMBER}/events"
LINKEDID = "1764151200.42"
T0 = "2026-11-26T10:00:00+03:00"


@dataclass
class Env:
    client: httpx.AsyncClient
    factory: async_sessionmaker[AsyncSession]
    engine: AsyncEngine
    url: str
    backend: str
    app: FastAPI
    box: SecretBox

    async def count(self, model: type[Any]) -> int:
        async with self.factory() as session:
            return int(await session.scalar(select(func.count()).select_from(model)) or 0)

    async def jobs(self) -> list[Job]:
        async with self.factory() as session:
            # The Bitrix24 command jobs (a missed call also gets a notification job).
            statement = select(Job).where(Job.kind == "bitrix24.command").order_by(Job.id)
            return list((await session.scalars(statement)).all())


@pytest.fixture
async def env(database: Database, fresh_database_url: str, tmp_path: Path) -> AsyncIterator[Env]:
    settings = make_settings(tmp_path, fresh_database_url)
    box = SecretBox(settings.fernet_keys())
    engine = create_engine(fresh_database_url)
    factory = create_session_factory(engine)
    async with factory() as session, session.begin():
        enterprise = Enterprise(number=NUMBER, name="Acme", webhook_secret_enc=box.encrypt(TOKEN))
        other = Enterprise(number="200", webhook_secret_enc=box.encrypt("another-token"))
        session.add_all([enterprise, other])
        await session.flush()
        integration = Bitrix24Integration(
            enterprise_id=enterprise.id,
            member_id="m-1",
            domain="portal.test",
            client_endpoint="http://portal.test/rest/",
            settings={"default_user_id": 1},
        )
        session.add(integration)
        await session.flush()
        session.add(Bitrix24User(integration_id=integration.id, user_id=11, extension="101"))
        session.add(Bitrix24User(integration_id=integration.id, user_id=12, extension="102"))
    app = create_app(settings)
    try:
        async with serve(app) as client:
            yield Env(client, factory, engine, fresh_database_url, database.backend, app, box)
    finally:
        await engine.dispose()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def event(type_: str, event_id: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "call_id": LINKEDID, "event_id": event_id, "timestamp": T0, **fields}


STARTED = event(
    "call.started", "e1", direction="inbound", external_number="84951234567", line="4951110101"
)
CALL = [
    STARTED,
    event("call.ringing", "e2", extensions=["101", "102"]),
    event("call.answered", "e3", extension="102"),
    event("call.ended", "e4", disposition="answered", hangup_cause=16, talk_seconds=42),
]


class TestAccepting:
    async def test_one_event_is_committed_before_the_202(self, env: Env) -> None:
        response = await env.client.post(URL, json=STARTED, headers=bearer())
        assert response.status_code == 202
        assert response.json() == {
            "accepted": 1,
            "duplicates": 0,
            "events": [{"event_id": "e1", "status": "accepted"}],
        }
        # Another connection sees it all: the commit happened before the answer.
        async with env.factory() as session:
            stored = (await session.scalars(select(PbxEvent))).one()
            assert (stored.event_id, stored.kind, stored.linkedid) == (
                "e1",
                "call.started",
                LINKEDID,
            )
            assert stored.handled_at is not None
            call = (await session.scalars(select(CallRow))).one()
            assert (call.linkedid, call.state, call.external_number) == (
                LINKEDID,
                "active",
                "+74951234567",
            )
        assert [job.payload["command"]["kind"] for job in await env.jobs()] == ["register"]

    async def test_fastapi_s_handler_answers_like_the_fast_path(self, env: Env) -> None:
        # A well-formed request is served by the route itself; with a dependency overridden,
        # FastAPI's handler serves it instead. Both must give the same answer.
        fast = await env.client.post(URL, json=CALL[:2], headers=bearer())
        env.app.dependency_overrides[get_settings] = get_settings
        slow = await env.client.post(URL, json=[CALL[1], *CALL[2:]], headers=bearer())
        assert (fast.status_code, slow.status_code) == (202, 202)
        assert fast.headers["content-type"] == slow.headers["content-type"]
        assert fast.json() == {
            "accepted": 2,
            "duplicates": 0,
            "events": [
                {"event_id": "e1", "status": "accepted"},
                {"event_id": "e2", "status": "accepted"},
            ],
        }
        assert slow.json() == {
            "accepted": 2,
            "duplicates": 1,
            "events": [
                {"event_id": "e2", "status": "duplicate"},
                {"event_id": "e3", "status": "accepted"},
                {"event_id": "e4", "status": "accepted"},
            ],
        }
        assert slow.content == slow.content.replace(b" ", b"")
        assert fast.content == fast.content.replace(b" ", b"")
        # Split across the two paths, the call queues what it queues in one request.
        kinds = [job.payload["command"]["kind"] for job in await env.jobs()]
        assert kinds == ["register", "show", "hide", "finish"]

    async def test_a_list_applies_in_order_with_one_job_per_command(self, env: Env) -> None:
        response = await env.client.post(URL, json=CALL, headers=bearer())
        assert response.status_code == 202
        assert [e["status"] for e in response.json()["events"]] == ["accepted"] * 4
        jobs = await env.jobs()
        assert [job.payload["command"]["kind"] for job in jobs] == [
            "register",
            "show",
            "hide",
            "finish",
        ]
        (call_id,) = {job.call_id for job in jobs}
        assert {job.ordering_key for job in jobs} == {f"call:{call_id}"}
        assert {job.kind for job in jobs} == {"bitrix24.command"}
        assert all(job.integration_id is not None for job in jobs)
        finish = jobs[-1].payload["command"]
        assert (finish["user_id"], finish["status_code"]) == (12, "200")

    async def test_duplicates_are_acknowledged_again_and_stored_once(self, env: Env) -> None:
        first = await env.client.post(URL, json=CALL[:2], headers=bearer())
        again = await env.client.post(URL, json=CALL[:3], headers=bearer())
        assert first.status_code == again.status_code == 202
        assert [e["status"] for e in again.json()["events"]] == [
            "duplicate",
            "duplicate",
            "accepted",
        ]
        assert (again.json()["accepted"], again.json()["duplicates"]) == (1, 2)
        assert await env.count(PbxEvent) == 3
        assert [job.payload["command"]["kind"] for job in await env.jobs()] == [
            "register",
            "show",
            "hide",
        ]

    async def test_dialplan_spellings(self, env: Env) -> None:
        body = [
            STARTED,
            event("call.ringing", "e2", extensions="101&102"),
            event("call.ended", "e3", disposition="NOANSWER", hangup_cause="19", talk_seconds=""),
        ]
        response = await env.client.post(URL, json=body, headers=bearer())
        assert response.status_code == 202, response.text
        finish = (await env.jobs())[-1].payload["command"]
        assert (finish["kind"], finish["status_code"]) == ("finish", "304")


class TestGroupCommit:
    async def test_concurrent_requests_are_answered_only_once_committed(self, env: Env) -> None:
        # The first request caches the enterprise's credential (a read of its own).
        assert (await env.client.post(URL, json=STARTED, headers=bearer())).status_code == 202
        bodies = [
            [event("call.started", f"x{n}", direction="inbound", external_number="84951234567")]
            for n in range(8)
        ]
        for body in bodies:
            for item in body:
                item["call_id"] = f"call-{item['event_id']}"
        async with writes_held(env.url, env.backend) as stored:
            posts = [
                asyncio.create_task(env.client.post(URL, json=body, headers=bearer()))
                for body in bodies
            ]
            await asyncio.sleep(0.5)
            assert not any(post.done() for post in posts)
            assert await stored() == 1
        responses = await asyncio.gather(*posts)
        assert [response.status_code for response in responses] == [202] * len(bodies)
        assert await env.count(PbxEvent) == 1 + len(bodies)
        assert await env.count(CallRow) == 1 + len(bodies)

    async def test_a_request_whose_call_cannot_be_read_fails_alone(self, env: Env) -> None:
        async with env.factory() as session, session.begin():
            enterprise = (
                await session.scalars(select(Enterprise).where(Enterprise.number == NUMBER))
            ).one()
            session.add(CallRow(enterprise_id=enterprise.id, linkedid="broken", model={"v": 9}))
        assert (await env.client.post(URL, json=STARTED, headers=bearer())).status_code == 202
        broken = {**CALL[1], "call_id": "broken", "event_id": "b1"}
        async with writes_held(env.url, env.backend):
            posts = [
                asyncio.create_task(env.client.post(URL, json=body, headers=bearer()))
                for body in (CALL[1], broken, CALL[2])
            ]
            await asyncio.sleep(0.5)
        good, bad, also_good = await asyncio.gather(*posts)
        assert (good.status_code, also_good.status_code) == (202, 202)
        assert bad.status_code == 500
        async with env.factory() as session:
            ids = set((await session.scalars(select(PbxEvent.event_id))).all())
        assert ids == {"e1", "e2", "e3"}

    async def test_a_deactivated_enterprise_is_refused_despite_the_cache(self, env: Env) -> None:
        assert (await env.client.post(URL, json=STARTED, headers=bearer())).status_code == 202
        async with env.factory() as session, session.begin():
            row = (
                await session.scalars(select(Enterprise).where(Enterprise.number == NUMBER))
            ).one()
            row.active = False
        response = await env.client.post(URL, json=CALL[1], headers=bearer())
        assert response.status_code == 401
        assert await env.count(PbxEvent) == 1


class TestAuthentication:
    async def test_unknown_enterprise_looks_like_a_bad_token(self, env: Env) -> None:
        unknown = await env.client.post("/pbx/999/events", json=STARTED, headers=bearer())
        wrong = await env.client.post(URL, json=STARTED, headers=bearer("wrong"))
        foreign = await env.client.post(URL, json=STARTED, headers=bearer("another-token"))
        missing = await env.client.post(URL, json=STARTED)
        for response in (unknown, wrong, foreign, missing):
            assert response.status_code == 401
            assert response.json() == unknown.json()
            assert response.headers["www-authenticate"].startswith("Bearer")
        assert unknown.json()["error"]["code"] == "unauthorized"
        assert await env.count(PbxEvent) == 0

    async def test_auth_is_checked_before_the_body(self, env: Env) -> None:
        response = await env.client.post(URL, json={"type": "nope"}, headers=bearer("wrong"))
        assert response.status_code == 401

    async def test_hmac_signature(self, env: Env) -> None:
        body = json.dumps(STARTED).encode()
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Callbridge-Timestamp": stamp,
            "X-Callbridge-Signature": sign(TOKEN, stamp, body),
        }
        response = await env.client.post(URL, content=body, headers=headers)
        assert response.status_code == 202

    async def test_hmac_over_another_body_is_refused(self, env: Env) -> None:
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Callbridge-Timestamp": stamp,
            "X-Callbridge-Signature": sign(TOKEN, stamp, b"{}"),
        }
        response = await env.client.post(URL, content=json.dumps(STARTED), headers=headers)
        assert response.status_code == 401

    async def test_hmac_with_the_wrong_key_is_refused(self, env: Env) -> None:
        body = json.dumps(STARTED).encode()
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Callbridge-Timestamp": stamp,
            "X-Callbridge-Signature": sign("another-token", stamp, body),
        }
        assert (await env.client.post(URL, content=body, headers=headers)).status_code == 401

    async def test_stale_hmac_is_refused(self, env: Env) -> None:
        body = json.dumps(STARTED).encode()
        stamp = str(int(time.time()) - 600)
        headers = {
            "Content-Type": "application/json",
            "X-Callbridge-Timestamp": stamp,
            "X-Callbridge-Signature": sign(TOKEN, stamp, body),
        }
        assert (await env.client.post(URL, content=body, headers=headers)).status_code == 401
        assert await env.count(PbxEvent) == 0

    async def test_inactive_enterprise_is_refused(self, env: Env) -> None:
        async with env.factory() as session, session.begin():
            row = (
                await session.scalars(select(Enterprise).where(Enterprise.number == NUMBER))
            ).one()
            row.active = False
        assert (await env.client.post(URL, json=STARTED, headers=bearer())).status_code == 401


class TestValidation:
    async def test_422_names_the_field_and_the_reason(self, env: Env) -> None:
        body = {k: v for k, v in STARTED.items() if k != "direction"}
        response = await env.client.post(URL, json=body, headers=bearer())
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["code"] == "validation_error"
        assert error["fields"] == [{"field": "body.direction", "reason": "Field required"}]

    async def test_in_a_list_the_field_has_its_index(self, env: Env) -> None:
        body = [STARTED, event("call.ended", "e9", disposition="maybe")]
        response = await env.client.post(URL, json=body, headers=bearer())
        assert response.status_code == 422
        (problem,) = response.json()["error"]["fields"]
        assert problem["field"] == "body.1.disposition"
        assert "answered" in problem["reason"]

    async def test_unknown_type_and_naive_timestamp(self, env: Env) -> None:
        body = [
            {**STARTED, "type": "call.exploded"},
            {**STARTED, "timestamp": "2026-11-26T10:00:00"},
        ]
        response = await env.client.post(URL, json=body, headers=bearer())
        fields = {p["field"]: p["reason"] for p in response.json()["error"]["fields"]}
        assert set(fields) == {"body.0.type", "body.1.timestamp"}
        assert "timezone" in fields["body.1.timestamp"]

    async def test_a_list_with_one_bad_event_stores_nothing(self, env: Env) -> None:
        bad = event("call.transferred", "e5", kind="blind")  # no target
        response = await env.client.post(URL, json=[*CALL[:3], bad], headers=bearer())
        assert response.status_code == 422
        assert response.json()["error"]["fields"][0]["field"] == "body.3"
        assert "to_extension" in response.json()["error"]["fields"][0]["reason"]
        assert await env.count(PbxEvent) == 0
        assert await env.count(CallRow) == 0
        assert await env.count(Job) == 0

    async def test_empty_list(self, env: Env) -> None:
        response = await env.client.post(URL, json=[], headers=bearer())
        assert response.status_code == 422


class TestOpenApi:
    async def test_the_contract_is_documented(self, env: Env) -> None:
        spec = (await env.client.get("/openapi.json")).json()
        operation = spec["paths"]["/pbx/{enterprise}/events"]["post"]
        assert set(operation["responses"]) >= {"202", "401", "422"}
        schemas = json.dumps(spec["components"]["schemas"])
        for name in ("CallStarted", "CallRinging", "CallEnded", "CallRecording", "CallLegEnded"):
            assert name in schemas


# -- the fast path's answers ---------------------------------------------------------------------

JSON = {"Content-Type": "application/json"}


def body_of(value: Any) -> bytes:
    return json.dumps(value).encode()


def signed(body: bytes, *, over: bytes | None = None, age: int = 0) -> dict[str, str]:
    stamp = str(int(time.time()) - age)
    signature = sign(TOKEN, stamp, body if over is None else over)
    return {**JSON, "X-Callbridge-Timestamp": stamp, "X-Callbridge-Signature": signature}


# Each request the webhook refuses, and its status.
REFUSALS = {
    "wrong token": 401,
    "no credential": 401,
    "another enterprise's token": 401,
    "unknown enterprise": 401,
    "signature over another body": 401,
    "stale signature": 401,
    "bad token and bad body": 401,
    "missing field": 422,
    "bad field in a list": 422,
    "unknown type and naive timestamp": 422,
    "no type": 422,
    "not events": 422,
    "a number": 422,
    "empty list": 422,
    "too many events": 422,
    "invalid JSON": 422,
    "bad token and invalid JSON": 422,
    "empty body": 422,
    "enterprise number too long": 422,
    "a vote beyond 64 bits": 422,
    "a cost of NaN": 422,
    "a byte order mark": 422,
}


def refused(case: str) -> tuple[str, bytes, dict[str, str]]:
    """One of :data:`REFUSALS`: path, body and headers."""
    started = body_of(STARTED)
    ended = body_of(event("call.ended", "e9", disposition="answered", vote=5, cost=1.5))
    auth = {**JSON, **bearer()}
    mixed = body_of(
        [{**STARTED, "type": "call.exploded"}, {**STARTED, "timestamp": "2026-11-26T10:00"}]
    )
    too_many = [
        event("call.ringing", f"r{n}", extensions=["101"])
        for n in range(MAX_EVENTS_PER_REQUEST + 1)
    ]
    requests = {
        "wrong token": (URL, started, {**JSON, **bearer("wrong")}),
        "no credential": (URL, started, JSON),
        "another enterprise's token": (URL, started, {**JSON, **bearer("another-token")}),
        "unknown enterprise": ("/pbx/999/events", started, auth),
        "signature over another body": (URL, started, signed(started, over=b"{}")),
        "stale signature": (URL, started, signed(started, age=600)),
        "bad token and bad body": (URL, b'{"type": "nope"}', {**JSON, **bearer("wrong")}),
        "missing field": (
            URL,
            body_of({k: v for k, v in STARTED.items() if k != "direction"}),
            auth,
        ),
        "bad field in a list": (
            URL,
            body_of([STARTED, event("call.ended", "e9", disposition="maybe")]),
            auth,
        ),
        "unknown type and naive timestamp": (URL, mixed, signed(mixed)),
        "no type": (URL, b'{"call_id": "x"}', auth),
        "not events": (URL, b'["call.started", 42]', auth),
        "a number": (URL, b"42", auth),
        "empty list": (URL, b"[]", auth),
        "too many events": (URL, body_of(too_many), auth),
        "invalid JSON": (URL, b'{"type": "call.started",', auth),
        "bad token and invalid JSON": (URL, b"{", {**JSON, **bearer("wrong")}),
        "empty body": (URL, b"", auth),
        "enterprise number too long": (f"/pbx/{'1' * 65}/events", started, auth),
        # Bodies a faster decoder would read otherwise than ``json``: the route's answer still.
        "a vote beyond 64 bits": (URL, ended.replace(b'"vote": 5', b'"vote": 1' + b"0" * 22), auth),
        "a cost of NaN": (URL, ended.replace(b'"cost": 1.5', b'"cost": NaN'), auth),
        "a byte order mark": (URL, b"\xef\xbb\xbf" + body_of({**STARTED, "direction": "up"}), auth),
    }
    return requests[case]


COMPARED_HEADERS = ("content-type", "content-length", "www-authenticate", "retry-after")


def answer(response: httpx.Response) -> tuple[int, bytes, list[str | None]]:
    """What a client can tell of an answer: status, body bytes and the headers that matter."""
    return (
        response.status_code,
        response.content,
        [response.headers.get(name) for name in COMPARED_HEADERS],
    )


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every credential check of a webhook request, by enterprise number."""
    checked: list[str] = []
    verify = CachedVerifiedEnterprise.verify

    async def counted(self: CachedVerifiedEnterprise, enterprise: str, *args: Any) -> Any:
        checked.append(enterprise)
        return await verify(self, enterprise, *args)

    monkeypatch.setattr(CachedVerifiedEnterprise, "verify", counted)
    return checked


Submit = Callable[[IntakeWriter, int, str, Sequence[Event]], Awaitable[list[Outcome]]]


@dataclass
class Submissions:
    """Every request handed to the intake writer (by the writer it went to)."""

    writers: list[IntakeWriter]
    made: asyncio.Event


def count_submissions(monkeypatch: pytest.MonkeyPatch, then: Submit | None = None) -> Submissions:
    """Count the writer's requests; ``then`` does the writer's part instead of the writer."""
    submissions = Submissions([], asyncio.Event())
    submit = IntakeWriter.submit

    async def counted(
        self: IntakeWriter, enterprise_id: int, secret_enc: str, events: Sequence[Event]
    ) -> list[Outcome]:
        submissions.writers.append(self)
        submissions.made.set()
        return await (then or submit)(self, enterprise_id, secret_enc, events)

    monkeypatch.setattr(IntakeWriter, "submit", counted)
    return submissions


async def through_the_route(env: Env, send: Callable[[], Awaitable[httpx.Response]]) -> Any:
    """``send()`` with FastAPI's handler serving it: the fast path leaves such an app alone."""
    env.app.dependency_overrides[get_settings] = get_settings
    try:
        return await send()
    finally:
        env.app.dependency_overrides.clear()


class TestFastPath:
    """The fast path answers every outcome itself, each exactly as FastAPI's route does."""

    @pytest.mark.parametrize("case", list(REFUSALS))
    async def test_a_refusal_is_the_route_s_and_checked_once(
        self, env: Env, verifications: list[str], case: str
    ) -> None:
        async def send() -> httpx.Response:
            path, body, headers = refused(case)
            return await env.client.post(path, content=body, headers=headers)

        fast = await send()
        fast_checks = len(verifications)
        verifications.clear()
        route = await through_the_route(env, send)
        assert answer(fast) == answer(route)
        assert fast.status_code == REFUSALS[case]
        assert fast.json()["error"]["code"] in {"unauthorized", "validation_error"}
        # Checked as often as the route checks it: once, or not at all for a body that is not
        # JSON (refused first) and a number the route refuses by its length.
        assert fast_checks == len(verifications) <= 1
        assert await env.count(PbxEvent) == 0
        assert await env.count(CallRow) == 0

    async def test_the_202_is_the_route_s(self, env: Env) -> None:
        first = await env.client.post(URL, json=CALL[:2], headers=bearer())
        fast = await env.client.post(URL, json=CALL[:2], headers=bearer())
        route = await through_the_route(
            env, lambda: env.client.post(URL, json=CALL[:2], headers=bearer())
        )
        assert (first.status_code, fast.status_code) == (202, 202)
        assert answer(fast) == answer(route)
        assert fast.json()["duplicates"] == 2

    async def test_a_writer_failure_is_submitted_once_and_answered_503(
        self, env: Env, monkeypatch: pytest.MonkeyPatch, verifications: list[str]
    ) -> None:
        # The writer is stopped mid-transaction (the server stops): it fails every request it
        # holds, and nothing of them is stored. (The first request caches the credential: a
        # read that would wait for the held lock too.)
        assert (await env.client.post(URL, json=STARTED, headers=bearer())).status_code == 202
        verifications.clear()
        submissions = count_submissions(monkeypatch)

        async def failing(body: Any) -> httpx.Response:
            submissions.writers.clear()
            submissions.made.clear()
            async with writes_held(env.url, env.backend):
                post = asyncio.create_task(env.client.post(URL, json=body, headers=bearer()))
                await submissions.made.wait()
                await asyncio.sleep(0.3)  # In its transaction, waiting for the lock.
                task = submissions.writers[0]._task
                assert task is not None
                task.cancel()
                # Submitted again, it would wait here for the lock, and be answered 202 after.
                await asyncio.sleep(0.3)
            response = await post
            assert len(submissions.writers) == 1
            return response

        fast = await failing(CALL[1])
        route = await through_the_route(env, lambda: failing(CALL[2]))
        assert fast.status_code == 503
        assert fast.json()["error"]["code"] == "storage"
        assert answer(fast) == answer(route)
        assert verifications == [NUMBER, NUMBER]
        assert await env.count(PbxEvent) == 1

    async def test_a_retry_after_is_kept(self, env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
        async def busy(*_args: Any) -> list[Outcome]:
            raise RetryLater(2.5, "the intake is busy; try again later")

        submitted = count_submissions(monkeypatch, then=busy).writers
        fast = await env.client.post(URL, json=STARTED, headers=bearer())
        route = await through_the_route(
            env, lambda: env.client.post(URL, json=STARTED, headers=bearer())
        )
        assert (fast.status_code, fast.headers["retry-after"]) == (503, "3")
        assert answer(fast) == answer(route)
        assert len(submitted) == 2  # One each.

    async def test_an_unexpected_error_is_answered_500_and_raised(
        self, env: Env, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        async def broken(*_args: Any) -> list[Outcome]:
            raise RuntimeError("broken writer")

        submitted = count_submissions(monkeypatch, then=broken).writers
        # Raised on for the server to log, after the answer: the client sees the answer.
        with pytest.raises(RuntimeError):
            await env.client.post(URL, json=STARTED, headers=bearer())
        assert len(submitted) == 1
        async with serve(env.app, raise_app_exceptions=False) as client:
            fast = await client.post(URL, json=STARTED, headers=bearer())
            route = await through_the_route(
                env, lambda: client.post(URL, json=STARTED, headers=bearer())
            )
        assert fast.status_code == 500
        assert fast.json()["error"]["code"] == "internal_error"
        assert answer(fast) == answer(route)
        assert len(submitted) == 3

    async def test_a_secret_encrypted_anew_is_looked_up_again(
        self, env: Env, monkeypatch: pytest.MonkeyPatch, verifications: list[str]
    ) -> None:
        assert (await env.client.post(URL, json=STARTED, headers=bearer())).status_code == 202
        await self._set_secret(env, TOKEN)
        submitted = count_submissions(monkeypatch).writers
        verifications.clear()
        response = await env.client.post(URL, json=CALL[1], headers=bearer())
        assert response.status_code == 202
        # Refused against the cached secret (nothing stored), then accepted with the new one.
        assert (len(submitted), len(verifications)) == (2, 2)
        assert await env.count(PbxEvent) == 2

    async def test_a_rotated_secret_is_refused_once_checked_again(
        self, env: Env, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        assert (await env.client.post(URL, json=STARTED, headers=bearer())).status_code == 202
        await self._set_secret(env, "rotated-token")
        submitted = count_submissions(monkeypatch).writers
        old = await env.client.post(URL, json=CALL[1], headers=bearer())
        assert old.status_code == 401
        assert len(submitted) == 1
        new = await env.client.post(URL, json=CALL[1], headers=bearer("rotated-token"))
        assert new.status_code == 202
        assert await env.count(PbxEvent) == 2

    @staticmethod
    async def _set_secret(env: Env, secret: str) -> None:
        async with env.factory() as session, session.begin():
            row = (
                await session.scalars(select(Enterprise).where(Enterprise.number == NUMBER))
            ).one()
            row.webhook_secret_enc = env.box.encrypt(secret)
