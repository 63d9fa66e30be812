"""The web app: lifespan, health probes, the one error shape, OpenAPI, request sessions."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI
from sqlalchemy import text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from callbridge import __version__
from callbridge.config import Settings, load_settings
from callbridge.domain.errors import (
    CallbridgeError,
    JobNotFoundError,
    RetryLater,
    StorageError,
    UnknownJobKindError,
)
from callbridge.storage import migrate
from callbridge.storage.db import create_unpooled_engine
from callbridge.web.app import create_app
from callbridge.web.background import BackgroundWorker
from callbridge.web.deps import HttpClientDep, SessionDep, SettingsDep
from callbridge.web.errors import code_for, status_for
from tests.conftest import Database

BASE_URL = "http://callbridge.test"


def make_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    return load_settings(var_dir=tmp_path / "var", database_url=database_url, **overrides)


@contextlib.asynccontextmanager
async def serve(
    app: FastAPI,
    *,
    raise_app_exceptions: bool = True,
    wrap: Callable[[ASGIApp], ASGIApp] | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and talk to it in-process, with the lifespan state in each scope."""
    async with app.router.lifespan_context(app) as state:
        assert isinstance(state, Mapping)

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            await app({**scope, "state": dict(state)}, receive, send)

        asgi = wrap(with_state) if wrap is not None else with_state
        transport = httpx.ASGITransport(app=asgi, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            yield client


@pytest.fixture
def settings(tmp_path: Path, database: Database) -> Settings:
    return make_settings(tmp_path, database.url)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(settings)) as client:
        yield client


class TestHealth:
    async def test_healthz_answers_ok(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/healthz")

        assert response.status_code == 200
        assert response.json() == {"status": "ok"}

    async def test_readyz_is_ready_on_a_migrated_database(
        self, client: httpx.AsyncClient, database: Database
    ) -> None:
        response = await client.get("/readyz")

        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "ready"
        assert body["revision"] == migrate.head_revision()
        assert body["database"] == ("sqlite" if database.backend == "sqlite" else "postgresql")

    async def test_readyz_is_503_on_an_unmigrated_database(self, tmp_path: Path) -> None:
        settings = make_settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")

        async with serve(create_app(settings)) as client:
            response = await client.get("/readyz")

        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "migrations_pending"
        assert "callbridge migrate" in error["message"]

    async def test_readyz_is_503_when_the_database_is_unreachable(self, tmp_path: Path) -> None:
        settings = make_settings(tmp_path, "postgresql+asyncpg://nobody:pw@127.0.0.1:1/none")

        async with serve(create_app(settings)) as client:
            response = await client.get("/readyz")

        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "storage"
        assert "CALLBRIDGE_DATABASE_URL" in error["message"]
        assert "pw" not in error["message"]

    async def test_healthz_still_answers_when_the_database_is_unreachable(
        self, tmp_path: Path
    ) -> None:
        settings = make_settings(tmp_path, "postgresql+asyncpg://nobody@127.0.0.1:1/none")

        async with serve(create_app(settings)) as client:
            response = await client.get("/healthz")

        assert response.status_code == 200


def _app_with_test_routes(settings: Settings) -> FastAPI:
    app = create_app(settings)

    @app.get("/test/items/{item_id}")
    async def get_item(item_id: int, limit: int = 10) -> dict[str, int]:
        return {"item_id": item_id, "limit": limit}

    @app.get("/test/raise/{kind}")
    async def raise_error(kind: str) -> None:
        errors: dict[str, Exception] = {
            "job-not-found": JobNotFoundError("no job 42"),
            "storage": StorageError("the database is unavailable"),
            "unknown-kind": UnknownJobKindError(),
            "plain": CallbridgeError("something is wrong"),
            "retry-later": RetryLater(2.5, "the portal is busy"),
            "bug": RuntimeError("internal detail"),
        }
        raise errors[kind]

    @app.get("/test/settings")
    async def show_port(settings: SettingsDep, http: HttpClientDep) -> dict[str, Any]:
        return {"port": settings.port, "read_timeout": http.timeout.read}

    return app


class TestErrorShape:
    @pytest.fixture
    async def client(self, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
        async with serve(_app_with_test_routes(settings), raise_app_exceptions=False) as client:
            yield client

    async def test_unknown_route_is_404_in_the_error_shape(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/no/such/route")

        assert response.status_code == 404
        assert response.json() == {"error": {"code": "not_found", "message": "Not Found"}}

    async def test_wrong_method_is_405_with_allow_header(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/healthz")

        assert response.status_code == 405
        assert response.json()["error"]["code"] == "method_not_allowed"
        assert "GET" in response.headers["allow"]

    async def test_validation_error_names_field_and_reason(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/test/items/abc", params={"limit": "many"})

        assert response.status_code == 422
        error = response.json()["error"]
        assert error["code"] == "validation_error"
        fields = {item["field"]: item["reason"] for item in error["fields"]}
        assert set(fields) == {"path.item_id", "query.limit"}
        assert "integer" in fields["path.item_id"]
        assert "path.item_id" in error["message"]

    @pytest.mark.parametrize(
        ("kind", "status", "code", "message"),
        [
            ("job-not-found", 404, "job_not_found", "no job 42"),
            ("storage", 503, "storage", "the database is unavailable"),
            (
                "unknown-kind",
                422,
                "unknown_job_kind",
                "No handler is registered for this job kind.",
            ),
            ("plain", 500, "callbridge", "something is wrong"),
        ],
    )
    async def test_callbridge_errors_map_to_status_and_code(
        self, client: httpx.AsyncClient, kind: str, status: int, code: str, message: str
    ) -> None:
        response = await client.get(f"/test/raise/{kind}")

        assert response.status_code == status
        assert response.json() == {"error": {"code": code, "message": message}}

    async def test_retryable_errors_say_when_to_retry(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/test/raise/retry-later")

        assert response.status_code == 503
        assert response.headers["retry-after"] == "3"
        assert response.json()["error"] == {"code": "retry_later", "message": "the portal is busy"}

    async def test_unexpected_exception_is_500_without_internals(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/test/raise/bug")

        assert response.status_code == 500
        assert response.json() == {
            "error": {"code": "internal_error", "message": "internal server error"}
        }

    async def test_dependencies_come_from_the_lifespan(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        response = await client.get("/test/settings")

        assert response.json() == {
            "port": settings.port,
            "read_timeout": settings.http_timeout_seconds,
        }


class TestErrorMapping:
    def test_a_subclass_gets_its_nearest_ancestors_status(self) -> None:
        class ReplicaLagError(StorageError):
            """The replica is behind."""

        assert status_for(ReplicaLagError()) == 503
        assert code_for(ReplicaLagError()) == "replica_lag"


class TestOpenAPI:
    async def test_openapi_document_describes_callbridge(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/openapi.json")

        assert response.status_code == 200
        document = response.json()
        assert document["info"]["title"] == "callbridge"
        assert document["info"]["version"] == __version__
        assert document["info"]["description"]
        assert {"/healthz", "/readyz"} <= set(document["paths"])

    async def test_docs_page_is_served(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/docs")

        assert response.status_code == 200
        assert "openapi.json" in response.text


class TestSessionDep:
    """The request's session commits when the route succeeds and rolls back when it fails."""

    @pytest.fixture
    async def app(self, tmp_path: Path, fresh_database_url: str) -> FastAPI:
        settings = make_settings(tmp_path, fresh_database_url)
        app = create_app(settings)

        @app.post("/test/notes/{body}")
        async def add_note(body: str, session: SessionDep, fail: bool = False) -> dict[str, str]:
            await session.execute(text("INSERT INTO test_notes (body) VALUES (:b)"), {"b": body})
            if fail:
                raise JobNotFoundError("failing after the write")
            return {"body": body}

        @app.get("/test/notes")
        async def list_notes(session: SessionDep) -> list[str]:
            rows = await session.execute(text("SELECT body FROM test_notes ORDER BY body"))
            return [row[0] for row in rows]

        return app

    @pytest.fixture
    async def client(self, app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
        async with serve(app) as client:
            yield client

    @pytest.fixture(autouse=True)
    async def _notes_table(self, fresh_database_url: str) -> None:
        engine = create_unpooled_engine(fresh_database_url)
        try:
            async with engine.begin() as connection:
                await connection.execute(text("CREATE TABLE test_notes (body VARCHAR(50))"))
        finally:
            await engine.dispose()

    async def test_success_commits(self, client: httpx.AsyncClient) -> None:
        created = await client.post("/test/notes/kept")

        assert created.status_code == 200
        assert (await client.get("/test/notes")).json() == ["kept"]

    async def test_error_rolls_back(self, client: httpx.AsyncClient) -> None:
        failed = await client.post("/test/notes/lost", params={"fail": "true"})

        assert failed.status_code == 404
        assert (await client.get("/test/notes")).json() == []

    async def test_commit_happens_before_the_response_is_sent(
        self, app: FastAPI, fresh_database_url: str
    ) -> None:
        observer = create_unpooled_engine(fresh_database_url)
        rows_when_response_started: list[int] = []

        def watch(inner: ASGIApp) -> ASGIApp:
            async def watching(scope: Scope, receive: Receive, send: Send) -> None:
                async def send_and_look(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        async with observer.connect() as connection:
                            count = await connection.scalar(text("SELECT COUNT(*) FROM test_notes"))
                        rows_when_response_started.append(int(count or 0))
                    await send(message)

                await inner(scope, receive, send_and_look)

            return watching

        try:
            async with serve(app, wrap=watch) as client:
                response = await client.post("/test/notes/durable")
        finally:
            await observer.dispose()

        assert response.status_code == 200
        assert rows_when_response_started == [1]


class _FakeWorker:
    """A worker that runs until stopped, or crashes when told to."""

    def __init__(self, *, crash: bool = False) -> None:
        self.crash = crash
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()

    async def run(self) -> None:
        self.started.set()
        if self.crash:
            raise RuntimeError("lost the database")
        await self.stopped.wait()

    def stop(self) -> None:
        self.stopped.set()


class TestInProcessWorker:
    async def test_worker_runs_with_the_app_and_stops_on_shutdown(self, settings: Settings) -> None:
        fake = _FakeWorker()
        built_with: list[Settings] = []

        def factory(settings: Settings, *_resources: Any) -> BackgroundWorker:
            built_with.append(settings)
            return fake

        async with serve(create_app(settings, worker_factory=factory)) as client:
            await asyncio.wait_for(fake.started.wait(), 5)
            assert (await client.get("/healthz")).status_code == 200
            assert not fake.stopped.is_set()

        assert fake.stopped.is_set()
        assert built_with == [settings]

    async def test_a_dead_worker_is_logged_and_fails_liveness(self, settings: Settings) -> None:
        fake = _FakeWorker(crash=True)

        with structlog.testing.capture_logs() as logs:
            async with serve(create_app(settings, worker_factory=lambda *_: fake)) as client:
                await asyncio.wait_for(fake.started.wait(), 5)
                await asyncio.sleep(0)
                response = await client.get("/healthz")

        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "worker_stopped"
        assert "lost the database" in error["message"]
        assert any(entry["log_level"] == "critical" for entry in logs)
