"""``GET /metrics``: Prometheus text exposition of what the database says about the bridge.

Every number is read at scrape time by :class:`callbridge.storage.metrics.MetricsRepository`
(a few aggregate queries in one short session), because the worker that does the work may be
another process: any web process reports the whole deployment. The session is closed before
the text is rendered: the snapshot goes to ``prometheus_client`` through a
:class:`~prometheus_client.registry.Collector`, which owns the format (escaping, types, help).
With ``CALLBRIDGE_METRICS_TOKEN`` set, a scrape must send it as a bearer token (the labels name
customers' portals and PBXs).

Metrics (all gauges):

- ``callbridge_jobs{kind,status}``: queued, running and dead jobs.
- ``callbridge_jobs_oldest_queued_age_seconds``: age of the oldest queued job (0 when none).
- ``callbridge_ami_up{enterprise}``: 1 while the enterprise's AMI listener is connected and
  reporting; ``callbridge_ami_state{enterprise,state}`` says which state it is in (``stale``:
  its process stopped reporting; ``not_started``: no listener has reported yet).
- ``callbridge_ami_seconds_since_last_event{enterprise}``, ``callbridge_ami_reconnects``,
  ``callbridge_ami_events_received``: from the listener's status row.
- ``callbridge_integration_status{domain,member_id,enterprise,status}``: 1 for each
  integration's current status, 0 for the others.
- ``callbridge_bitrix24_api_calls{method,error}`` and ``callbridge_bitrix24_api_time_seconds``:
  Bitrix24 requests started in the last ``callbridge_bitrix24_api_window_seconds``, by method and
  outcome (``error`` is Bitrix24's error code, ``HTTP_<status>`` or the transport error; empty
  when the request succeeded).
- ``callbridge_calls_in_progress{enterprise}``: calls that have not ended.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from datetime import timedelta
from http import HTTPStatus
from typing import Annotated, Final

from fastapi import APIRouter, Header, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import InterfaceError, OperationalError

from callbridge import __version__
from callbridge.domain.errors import StorageError
from callbridge.storage.metrics import PENDING_JOB_STATUSES, MetricsRepository, MetricsSnapshot
from callbridge.storage.models import IntegrationStatus
from callbridge.storage.types import utcnow
from callbridge.web.deps import SessionFactoryDep, SettingsDep
from callbridge.web.errors import error_response

router = APIRouter(tags=["metrics"])

#: Bitrix24 requests are counted over this window: long enough to span a few scrapes, short
#: enough that the numbers say what is happening now.
API_WINDOW: Final = timedelta(minutes=5)
#: Listener states, as written by the AMI supervisor, plus the two this endpoint infers.
AMI_STATES: Final = (
    "not_started",
    "connecting",
    "connected",
    "disconnected",
    "unreachable",
    "refused",
    "stopped",
    "stale",
)


class SnapshotCollector(Collector):
    """Turns one :class:`MetricsSnapshot` into metric families."""

    def __init__(self, snapshot: MetricsSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """Every family, in a stable order."""
        snapshot = self.snapshot
        info = GaugeMetricFamily(
            "callbridge_build_info",
            "The callbridge version serving this scrape.",
            labels=["version"],
        )
        info.add_metric([__version__], 1)
        yield info
        yield from self._jobs()
        yield from self._ami()
        yield from self._integrations()
        yield from self._api_calls()
        calls = GaugeMetricFamily(
            "callbridge_calls_in_progress", "Calls that have not ended.", labels=["enterprise"]
        )
        for enterprise, count in sorted(snapshot.calls_in_progress.items()):
            calls.add_metric([enterprise], count)
        yield calls

    def _jobs(self) -> Iterator[Metric]:
        snapshot = self.snapshot
        jobs = GaugeMetricFamily(
            "callbridge_jobs", "Queued, running and dead jobs.", labels=["kind", "status"]
        )
        counts = {(job.kind, job.status): job.count for job in snapshot.jobs}
        # Every kind seen gets all three statuses, so a series drops to 0 instead of vanishing.
        for kind in sorted({job.kind for job in snapshot.jobs}):
            for status in PENDING_JOB_STATUSES:
                jobs.add_metric([kind, status.value], counts.get((kind, status.value), 0))
        yield jobs
        queued = [job.oldest_created_at for job in snapshot.jobs if job.status == "queued"]
        age = (snapshot.now - min(queued)).total_seconds() if queued else 0.0
        yield GaugeMetricFamily(
            "callbridge_jobs_oldest_queued_age_seconds",
            "Seconds since the oldest queued job was enqueued (0 when none is queued).",
            value=max(age, 0.0),
        )

    def _ami(self) -> Iterator[Metric]:
        snapshot = self.snapshot
        up = GaugeMetricFamily(
            "callbridge_ami_up",
            "1 while the enterprise's AMI listener is connected and reporting.",
            labels=["enterprise"],
        )
        state = GaugeMetricFamily(
            "callbridge_ami_state",
            "The AMI listener's state: 1 for the current one.",
            labels=["enterprise", "state"],
        )
        since_event = GaugeMetricFamily(
            "callbridge_ami_seconds_since_last_event",
            "Seconds since the listener last received an AMI event.",
            labels=["enterprise"],
        )
        reconnects = GaugeMetricFamily(
            "callbridge_ami_reconnects",
            "Reconnections reported by the enterprise's current AMI listener.",
            labels=["enterprise"],
        )
        events = GaugeMetricFamily(
            "callbridge_ami_events_received",
            "AMI events received by the enterprise's current AMI listener.",
            labels=["enterprise"],
        )
        for line in snapshot.ami:
            if line.state is None:
                current = "not_started"
            elif line.stale:
                current = "stale"
            else:
                current = line.state
            up.add_metric([line.enterprise], 1 if current == "connected" else 0)
            for name in (*AMI_STATES, *(() if current in AMI_STATES else (current,))):
                state.add_metric([line.enterprise, name], 1 if name == current else 0)
            if line.last_event_at is not None:
                age = (snapshot.now - line.last_event_at).total_seconds()
                since_event.add_metric([line.enterprise], max(age, 0.0))
            if line.state is not None:
                reconnects.add_metric([line.enterprise], line.reconnects)
                events.add_metric([line.enterprise], line.events_in)
        yield from (up, state, since_event, reconnects, events)

    def _integrations(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "callbridge_integration_status",
            "Each Bitrix24 integration's status: 1 for the current one.",
            labels=["domain", "member_id", "enterprise", "status"],
        )
        known = [status.value for status in IntegrationStatus]
        for line in self.snapshot.integrations:
            statuses = known if line.status in known else [*known, line.status]
            for status in statuses:
                labels = [line.domain, line.member_id, line.enterprise or "", status]
                family.add_metric(labels, 1 if status == line.status else 0)
        yield family

    def _api_calls(self) -> Iterator[Metric]:
        snapshot = self.snapshot
        window = snapshot.api_window.total_seconds()
        yield GaugeMetricFamily(
            "callbridge_bitrix24_api_window_seconds",
            "The window the Bitrix24 request gauges count over.",
            value=window,
        )
        calls = GaugeMetricFamily(
            "callbridge_bitrix24_api_calls",
            "Bitrix24 requests started in the window, by method and error (empty: succeeded).",
            labels=["method", "error"],
        )
        time_spent = GaugeMetricFamily(
            "callbridge_bitrix24_api_time_seconds",
            "Seconds spent on Bitrix24 requests started in the window, by method and error.",
            labels=["method", "error"],
        )
        for row in snapshot.api_calls:
            calls.add_metric([row.method, row.error], row.count)
            time_spent.add_metric([row.method, row.error], row.duration_seconds)
        yield calls
        yield time_spent


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Text exposition"},
        401: {"description": "CALLBRIDGE_METRICS_TOKEN is set and was not sent"},
    },
)
async def metrics(
    session_factory: SessionFactoryDep,
    settings: SettingsDep,
    authorization: Annotated[str, Header(include_in_schema=False)] = "",
) -> Response:
    """Jobs, AMI listeners, integrations, Bitrix24 requests and open calls, in Prometheus text."""
    token = settings.metrics_token.get_secret_value()
    if token and not _bearer_matches(authorization, token):
        # The series name customers' portals and PBXs: with a token set, nobody else reads them.
        return error_response(
            HTTPStatus.UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <CALLBRIDGE_METRICS_TOKEN>",
            headers={"WWW-Authenticate": 'Bearer realm="callbridge-metrics"'},
        )
    try:
        async with session_factory() as session:
            snapshot = await MetricsRepository(session).snapshot(utcnow(), API_WINDOW)
    except (OperationalError, InterfaceError, OSError) as err:
        raise StorageError("the database is unavailable; try again later") from err
    return Response(generate_latest(SnapshotCollector(snapshot)), media_type=CONTENT_TYPE_LATEST)


def _bearer_matches(authorization: str, token: str) -> bool:
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Digests first: compare_digest leaks the length of what it compares.
    return hmac.compare_digest(
        hashlib.sha256(given.strip().encode()).digest(), hashlib.sha256(token.encode()).digest()
    )
