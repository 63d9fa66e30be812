"""Liveness and readiness probes.

``/healthz`` does no I/O: it answers while the process can serve requests, and fails only when
the in-process worker has died (a restart is the fix). ``/readyz`` checks that the database
answers and its schema is at the newest migration; it answers 503 with the reason otherwise.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from callbridge.storage.probe import ensure_ready
from callbridge.web.deps import EngineDep, WorkerRunnerDep
from callbridge.web.errors import ErrorResponse, error_response

router = APIRouter(tags=["health"])

_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    HTTPStatus.SERVICE_UNAVAILABLE.value: {"model": ErrorResponse, "description": "Not ready"}
}


class Liveness(BaseModel):
    """The process is up."""

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """The process can do its work: the database answers and its schema is current."""

    status: Literal["ready"] = "ready"
    database: str
    revision: str | None


@router.get(
    "/healthz",
    response_model=Liveness,
    summary="Liveness probe",
    responses={
        HTTPStatus.SERVICE_UNAVAILABLE.value: {
            "model": ErrorResponse,
            "description": "The in-process worker died; restart callbridge",
        }
    },
)
async def healthz(worker: WorkerRunnerDep) -> Liveness | JSONResponse:
    """Answer while the process is alive; no I/O."""
    if worker is not None and not worker.alive:
        return error_response(
            HTTPStatus.SERVICE_UNAVAILABLE,
            "worker_stopped",
            f"the worker stopped ({worker.failure}); restart callbridge",
        )
    return Liveness()


@router.get("/readyz", response_model=Readiness, summary="Readiness probe", responses=_UNAVAILABLE)
async def readyz(engine: EngineDep) -> Readiness:
    """Answer 200 when the database is reachable and migrated, 503 with the reason otherwise."""
    status = await ensure_ready(engine)
    return Readiness(database=engine.dialect.name, revision=status.current)
