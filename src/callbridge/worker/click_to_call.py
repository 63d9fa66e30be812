"""The ``bitrix24.click_to_call`` and ``bitrix24.callback_request`` handlers.

Each reads what :func:`callbridge.services.click_to_call.plan` needs in short sessions of its
own (never ``job.session``: on SQLite its connection is the only one, and the Originate and
the portal calls would hold it), then originates over a short-lived AMI connection.

An Originate is sent at most once per job: before sending, the job's payload is marked (and
committed), and a job that finds the mark (a retry after a crash or a lost lease) does not send
again. After the mark, the handler never raises, so the runner never retries into a second call.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import httpx
from sqlalchemy import select

from callbridge.directory import ResponsibleFinder
from callbridge.domain.errors import CallbridgeError
from callbridge.pbx.ami.listener import AmiUrl, InvalidAmiUrlError
from callbridge.pbx.ami.originate import (
    OriginateOutcome,
    OriginateRequest,
    OriginateResult,
    originate,
    originate_settings,
)
from callbridge.portals import EVENT_JOB_KINDS, Portals
from callbridge.services.click_to_call import (
    CALLBACK,
    CALLBACK_QUEUE_SETTING,
    CLICK_TO_CALL,
    REPEAT_WINDOW,
    Drop,
    Fail,
    Kind,
    Originate,
    PbxCandidate,
    PhoneRequest,
    failure_commands,
    plan,
)
from callbridge.services.responsible import Responsible
from callbridge.services.user_sync import extension_overrides, extensions_by_user
from callbridge.storage.crypto import SecretDecryptionError
from callbridge.storage.models import Bitrix24Integration, Enterprise, IntegrationStatus, Job
from callbridge.storage.repositories import IntegrationRepository
from callbridge.storage.repositories.bitrix24_users import Bitrix24UserRepository
from callbridge.storage.user_directory import stored_user
from callbridge.worker.directory import PortalsHolder
from callbridge.worker.registry import Handler, JobContext, JobRegistry

__all__ = [
    "CALLBACK_JOB",
    "CLICK_TO_CALL_JOB",
    "handle_phone_request",
    "register_click_to_call_jobs",
]

logger = logging.getLogger(__name__)

CLICK_TO_CALL_JOB: Final = EVENT_JOB_KINDS["ONEXTERNALCALLSTART"]
CALLBACK_JOB: Final = EVENT_JOB_KINDS["ONEXTERNALCALLBACKSTART"]
_KINDS: Final[Mapping[str, Kind]] = {CLICK_TO_CALL_JOB: CLICK_TO_CALL, CALLBACK_JOB: CALLBACK}
#: The payload key that marks a job whose Originate was (about to be) sent.
SENT_MARK: Final = "originate_sent_at"


def _aware(value: datetime) -> datetime:
    # Stored times are UTC; SQLite may hand them back naive.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _candidate(row: Enterprise) -> PbxCandidate:
    settings = row.settings or {}
    channel, context = originate_settings(settings)
    raw = settings.get("extensions")
    extensions = frozenset(str(e) for e in raw) if isinstance(raw, list | tuple) else None
    return PbxCandidate(
        enterprise_id=row.id,
        has_ami=row.active and row.ami_url_enc is not None,
        extensions=extensions,
        channel_pattern=channel,
        context=context,
    )


def _enterprise_ids(row: Bitrix24Integration) -> list[int]:
    # The linked enterprise, then any further PBXs of the portal (``settings.enterprises``).
    ids = [row.enterprise_id] if row.enterprise_id is not None else []
    extra = (row.settings or {}).get("enterprises") or []
    if isinstance(extra, list | tuple):
        for value in extra:
            if str(value).isdigit() and int(value) not in ids:
                ids.append(int(value))
    return ids


async def _mark_sent(portals: Portals, job_id: int) -> bool:
    """Mark the job's Originate as sent (committed); False if an earlier run already had."""
    async with portals.session_factory() as session:
        row = await session.get(Job, job_id)
        if row is None:
            return False
        payload = dict(row.payload or {})
        if payload.get(SENT_MARK):
            return False
        payload[SENT_MARK] = datetime.now(UTC).isoformat()
        row.payload = payload
        await session.commit()
    return True


async def _tell(
    portals: Portals,
    integration: Bitrix24Integration,
    commands: Sequence[tuple[str, dict[str, Any]]],
) -> list[str]:
    """Send the failure commands; what went wrong (never raises: the call must not be retried)."""
    client = portals.client_for(integration)
    errors: list[str] = []
    for method, params in commands:
        try:
            await client.call(method, params)
        except (CallbridgeError, httpx.HTTPError) as err:
            # Logged and reported, not raised: a retried job would not re-send the finish
            # (its Originate is marked sent), and must not re-plan a call that failed.
            errors.append(f"{method}: {err}")
            logger.warning("click-to-call: %s failed on %s: %s", method, integration.domain, err)
    return errors


async def handle_phone_request(
    portals: Portals,
    job_id: int,
    kind: str,
    integration_id: int | None,
    payload: Mapping[str, Any],
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Plan and place one click-to-call or callback; what was done (for the job's result)."""
    request = PhoneRequest.from_payload(_KINDS[kind], payload)
    if payload.get(SENT_MARK):
        # An earlier run of this job got as far as sending: the phone may be ringing.
        return {"skipped": "originate already sent by an earlier attempt"}
    if integration_id is None:
        return {"skipped": "no integration"}
    async with portals.session_factory() as session:
        integration = await IntegrationRepository(session, portals.box).get(integration_id)
        if integration is None or integration.status != IntegrationStatus.ACTIVE.value:
            return {"skipped": "integration not active"}
        this_job = await session.get(Job, job_id)
        received_at = _aware(this_job.created_at) if this_job is not None else datetime.now(UTC)
        earlier_jobs = (
            await session.scalars(
                select(Job).where(
                    Job.kind == kind,
                    Job.integration_id == integration_id,
                    Job.id < job_id,
                    Job.created_at >= received_at - REPEAT_WINDOW,
                )
            )
        ).all()
        earlier = [
            (PhoneRequest.from_payload(_KINDS[kind], job.payload or {}), _aware(job.created_at))
            for job in earlier_jobs
        ]
        enterprises = [
            row
            for enterprise_id in _enterprise_ids(integration)
            if (row := await session.get(Enterprise, enterprise_id)) is not None
        ]
        users = await Bitrix24UserRepository(session).for_integration(integration.id)
        urls = {row.id: row.ami_url_enc for row in enterprises}
    settings = integration.settings or {}
    extensions = extensions_by_user(
        [stored_user(user) for user in users], extension_overrides(settings)
    )
    candidates = [_candidate(row) for row in enterprises]
    language = str(settings.get("language") or "ru").lower()[:2]
    queue = str(settings.get(CALLBACK_QUEUE_SETTING) or "")
    responsible: int | None = None
    if request.kind == CALLBACK and not queue and candidates:
        # The CRM owner of the number takes the callback (the portal is asked, no session open).
        found = await ResponsibleFinder(portals).find(candidates[0].enterprise_id, request.phone)
        if isinstance(found, Responsible):
            responsible = found.user_id
    decision = plan(
        request,
        now=now or datetime.now(UTC),
        received_at=received_at,
        earlier=earlier,
        extensions=extensions,
        candidates=candidates,
        responsible_user=responsible,
        default_user=int(settings.get("default_user_id") or 1),
        callback_queue=queue,
    )
    if isinstance(decision, Drop):
        # A stale event is worth a warning: the portal or our queue is lagging.
        log = logger.warning if decision.reason.startswith("stale") else logger.info
        log(
            "click-to-call: %s %s dropped: %s",
            kind,
            request.call_id or request.phone,
            decision.reason,
        )
        return {"dropped": decision.reason}
    if isinstance(decision, Originate):
        result = await _originate(portals, job_id, urls.get(decision.enterprise_id), decision)
        if result is None:
            return {"skipped": "originate already sent by an earlier attempt"}
        if result.outcome is OriginateOutcome.QUEUED:
            return {
                "originated": decision.extension,
                "number": decision.number,
                "enterprise_id": decision.enterprise_id,
                "action_id": result.action_id,
            }
        if result.outcome is OriginateOutcome.UNKNOWN:
            # It may ring: the call model finishes the CALL_ID if it does; never re-sent.
            logger.warning("click-to-call: outcome unknown for %s: %s", request.call_id, result)
            return {"unknown": result.detail, "extension": decision.extension}
        decision_fail = Fail("refused", decision.user_id, result.detail)
    else:
        decision_fail = decision
    logger.warning(
        "click-to-call: %s for %s failed: %s %s",
        kind,
        request.call_id or request.phone,
        decision_fail.reason,
        decision_fail.detail,
    )
    errors = await _tell(portals, integration, failure_commands(request, decision_fail, language))
    return {"failed": decision_fail.reason, "detail": decision_fail.detail, "errors": errors}


async def _originate(
    portals: Portals, job_id: int, url_enc: str | None, decision: Originate
) -> OriginateResult | None:
    """Send the Originate once; None when an earlier run of the job already sent it."""
    try:
        url = AmiUrl.parse(portals.box.decrypt(url_enc or ""))
    except (InvalidAmiUrlError, SecretDecryptionError) as err:
        return OriginateResult(OriginateOutcome.REFUSED, f"the stored AMI URL is unusable: {err}")
    if not await _mark_sent(portals, job_id):
        return None
    request = OriginateRequest(
        extension=decision.extension,
        number=decision.number,
        bitrix24_call_id=decision.bitrix24_call_id,
        callback=decision.callback,
        channel_pattern=decision.channel_pattern,
        context=decision.context,
    )
    return await originate(url, request)


def phone_request_handler(holder: PortalsHolder) -> Handler:
    """The handler for both kinds (the job's kind says which)."""

    async def phone_request(job: JobContext) -> dict[str, Any] | None:
        # job.session stays unused: on SQLite its connection is the only one.
        return await handle_phone_request(
            holder.get(), job.id, job.kind, job.integration_id, job.payload
        )

    return phone_request


def register_click_to_call_jobs(registry: JobRegistry, holder: PortalsHolder) -> None:
    """Register ``bitrix24.click_to_call`` and ``bitrix24.callback_request``."""
    handler = phone_request_handler(holder)
    for kind in (CLICK_TO_CALL_JOB, CALLBACK_JOB):
        if kind not in registry:
            registry.register(kind, handler)
