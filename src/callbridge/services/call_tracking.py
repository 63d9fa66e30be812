"""Call tracking: PBX events in, call state and Bitrix24 jobs out, in the caller's transaction.

For each batch of events (one webhook request, or a run of AMI events), :func:`track_events`:

1. locks every call the batch names (by enterprise + linkedid), in linkedid order so two
   batches naming the same calls cannot deadlock; the lock also serialises the enqueueing of a
   call's jobs, which the job queue's per-key ordering needs;
2. stores each event in the inbox, as handled (its effects commit with it); a repeat is
   acknowledged as a duplicate and changes nothing;
3. applies the new events to their calls, in the batch's order, with the enterprise's
   :class:`~callbridge.domain.call.CallPolicy`;
4. saves each changed call and enqueues one :data:`BITRIX24_COMMAND_JOB` per command, ordered
   per call (``ordering_key = "call:<call row id>"``) and tagged with the integration. A
   recording known only as a file on the PBX is a :data:`BITRIX24_UPLOAD_JOB` instead (same
   payload, same ordering key, so it still runs after the call's finish): uploads run outside
   the portal's command lane, where a large file would hold up every other call's commands.

The caller commits (the web request's session, or the AMI listener's transaction): nothing is
half-applied, and an acknowledged event is a committed one. An enterprise without a live
Bitrix24 integration still has its events stored and its calls tracked; no jobs are enqueued.

A call keeps the integration it started with (``calls.integration_id``, fixed by the batch in
which it starts): its later commands name Bitrix24 calls registered there, or never
registered at all. So a call that started with no live integration never has jobs, even once
the enterprise is linked to a portal; and once a call's integration is no longer live (or no
longer the enterprise's), its commands are dropped from then on, never sent to another one.

Job payload (``version`` 1), for the dispatcher::

    {
        "version": 1,
        "call_id": 42,                # calls.id (also the job's call_id column)
        "linkedid": "1732611234.17",  # the PBX's call id
        "enterprise_id": 3,
        "leg": 0,                     # the command's leg; resolve it to the leg's CALL_ID
        "external_call_id": "1732611234.17-0",
        "command": {"kind": "register", "leg": 0, ...},  # domain.commands.command_to_dict
    }
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Final

from callbridge.domain.call import Call, CallPolicy, CallState
from callbridge.domain.commands import AttachRecord, Command, FinishCall, command_to_dict
from callbridge.domain.events import Direction, Event
from callbridge.domain.ports import (
    CallKey,
    CallRepository,
    CallRouting,
    EventInbox,
    JobQueue,
    NewJob,
    RoutingSource,
)

__all__ = [
    "BITRIX24_COMMAND_JOB",
    "BITRIX24_UPLOAD_JOB",
    "JOB_PAYLOAD_VERSION",
    "NOTIFY_MISSED_JOB",
    "CallTrackingPorts",
    "EventGroup",
    "Outcome",
    "command_job_payload",
    "is_missed_inbound",
    "job_kind",
    "missed_call_payload",
    "ordering_key",
    "track_event_groups",
    "track_events",
]

logger = logging.getLogger(__name__)

#: One job per Bitrix24 command (register, show, hide, finish, attach_record).
BITRIX24_COMMAND_JOB: Final = "bitrix24.command"
#: ``attach_record`` of a file on the PBX: read and uploaded outside the portal's command lane.
BITRIX24_UPLOAD_JOB: Final = "bitrix24.upload_recording"
JOB_PAYLOAD_VERSION: Final = 1
#: A missed inbound call, told to its responsible user (``im.notify``), after its finish.
NOTIFY_MISSED_JOB: Final = "bitrix24.notify_missed"
#: Where webhook events are filed in the inbox (AMI listeners use ``ami:<connection>``).
WEBHOOK_SOURCE: Final = "webhook"


class Outcome(StrEnum):
    """What became of one event of a batch."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class CallTrackingPorts:
    """The storage the use case drives, all on one unit of work."""

    inbox: EventInbox
    calls: CallRepository
    jobs: JobQueue
    routing: RoutingSource


def ordering_key(call_row_id: int) -> str:
    """The jobs of one call run one at a time, in the order they were enqueued."""
    return f"call:{call_row_id}"


def job_kind(command: Command) -> str:
    """The job kind that runs a command: an upload of a file on the PBX is a kind of its own."""
    if isinstance(command, AttachRecord) and command.path and not command.url:
        return BITRIX24_UPLOAD_JOB
    return BITRIX24_COMMAND_JOB


def command_job_payload(
    *, call_row_id: int, enterprise_id: int, call: Call, command: Command
) -> dict[str, Any]:
    """The JSON payload of a :data:`BITRIX24_COMMAND_JOB` (see the module docstring)."""
    return {
        "version": JOB_PAYLOAD_VERSION,
        "call_id": call_row_id,
        "linkedid": call.call_id,
        "enterprise_id": enterprise_id,
        "leg": command.leg,
        "external_call_id": call.leg(command.leg).external_call_id,
        "command": command_to_dict(command),
    }


def is_missed_inbound(call: Call, finish: FinishCall) -> bool:
    """Whether this finish ends an inbound call that nobody answered (leg 0, the customer's)."""
    return (
        finish.leg == 0
        and call.direction is Direction.INBOUND
        and not call.answered
        and finish.status_code != "200"
    )


def missed_call_payload(
    *, call_row_id: int, enterprise_id: int, call: Call, finish: FinishCall
) -> dict[str, Any]:
    """The JSON payload of a :data:`NOTIFY_MISSED_JOB`: who to tell, about which number."""
    return {
        "version": JOB_PAYLOAD_VERSION,
        "call_id": call_row_id,
        "linkedid": call.call_id,
        "enterprise_id": enterprise_id,
        "user_id": finish.user_id,
        "phone_number": call.phone_number or call.external_number,
        "line": call.line,
        "started_at": call.started_at.isoformat() if call.started_at else None,
    }


@dataclass(frozen=True)
class EventGroup:
    """One batch of one enterprise's events: a webhook request, or a run of AMI events."""

    enterprise_id: int
    events: Sequence[Event]
    source: str = WEBHOOK_SOURCE


async def track_events(
    ports: CallTrackingPorts,
    enterprise_id: int,
    events: Sequence[Event],
    *,
    source: str = WEBHOOK_SOURCE,
) -> list[Outcome]:
    """Apply a batch of one enterprise's events; each event's outcome, in the batch's order."""
    (outcomes,) = await track_event_groups(ports, [EventGroup(enterprise_id, events, source)])
    return outcomes


async def track_event_groups(
    ports: CallTrackingPorts, groups: Sequence[EventGroup]
) -> list[list[Outcome]]:
    """Apply several batches in one unit of work, in order; each batch's outcomes.

    The same as :func:`track_events` on each group in turn, in one transaction, but with one
    bulk statement per table: a group of requests costs a handful of round trips, not a
    handful per event. Later groups see what earlier ones did to a call.
    """
    if not any(group.events for group in groups):
        return [[] for _ in groups]
    routings: dict[int, CallRouting] = {}
    for group in groups:
        if group.events and group.enterprise_id not in routings:
            routings[group.enterprise_id] = await ports.routing.for_enterprise(group.enterprise_id)
    # Locked in (enterprise, linkedid) order, so two transactions cannot deadlock on calls.
    keys = sorted(
        {(group.enterprise_id, event.call_id) for group in groups for event in group.events}
    )
    stored = await ports.calls.get_many(keys)
    calls: dict[CallKey, Call] = {}
    # Where each call's commands go (None: nowhere), and the policy it is tracked with.
    destinations: dict[CallKey, int | None] = {}
    policies: dict[CallKey, CallPolicy] = {}
    for key in keys:
        _, call, remembered = stored[key]
        routing = routings[key[0]]
        if call is not None and call.state is not CallState.NEW:
            # Started: its commands go where its first ones went, whatever the enterprise is
            # linked to now (the CALL_IDs it was given live on that portal, or nowhere).
            integration_id = remembered
        else:
            # Nothing sent yet: the enterprise's integration now, fixed once the call starts
            # (even with no commands then: a click-to-call start registers nothing).
            integration_id = routing.integration_id
        policy = routing.policy_of(integration_id)
        if policy is None:
            # Nowhere, or no longer live: nothing more of the call is ever sent (a later
            # command would follow one that was not), so it is tracked as the enterprise's.
            integration_id, policy = None, routing.policy
        destinations[key], policies[key] = integration_id, policy
        calls[key] = call if call is not None else Call.new(key[1])

    fresh = iter(
        await ports.inbox.add_many(
            [
                (group.enterprise_id, group.source, event)
                for group in groups
                for event in group.events
            ]
        )
    )
    results: list[list[Outcome]] = []
    changed: dict[CallKey, None] = {}
    jobs: list[NewJob] = []
    # (index of the finish in ``jobs``, the notification that must wait for it)
    notifications: list[tuple[int, NewJob]] = []
    # Commands not queued, by enterprise: of an enterprise with no live integration, and of
    # calls that started without one (or on one no longer live) while it has one now.
    dropped: dict[int, int] = {}
    stranded: dict[int, int] = {}
    for group in groups:
        outcomes: list[Outcome] = []
        # Insertion order = the order the group first touched the calls with a new event.
        commands: dict[CallKey, list[Command]] = {}
        for event in group.events:
            if not next(fresh):
                outcomes.append(Outcome.DUPLICATE)
                continue
            outcomes.append(Outcome.ACCEPTED)
            key = (group.enterprise_id, event.call_id)
            commands.setdefault(key, []).extend(calls[key].apply(event, policies[key]))
        results.append(outcomes)
        for key, call_commands in commands.items():
            changed[key] = None
            integration_id = destinations[key]
            if integration_id is None:
                lost = stranded if routings[key[0]].integration_id is not None else dropped
                lost[key[0]] = lost.get(key[0], 0) + len(call_commands)
                continue
            _jobs_for(
                call_commands,
                key[0],
                stored[key].row_id,
                calls[key],
                integration_id,
                jobs,
                notifications,
            )
    if not changed:
        return results

    await ports.calls.save_many(
        [(stored[key].row_id, calls[key], destinations[key]) for key in changed]
    )
    if jobs:
        job_ids = await ports.jobs.enqueue_many(jobs)
        if notifications:
            await ports.jobs.enqueue_many(
                [replace(job, depends_on=job_ids[index]) for index, job in notifications]
            )
    for enterprise_id, count in dropped.items():
        logger.info(
            "enterprise %s has no live Bitrix24 integration: calls tracked, "
            "%d Bitrix24 commands not queued",
            enterprise_id,
            count,
        )
    for enterprise_id, count in stranded.items():
        logger.info(
            "enterprise %s: calls that started without a live Bitrix24 integration, or on one "
            "no longer live, never move to another: calls tracked, %d Bitrix24 commands not "
            "queued",
            enterprise_id,
            count,
        )
    return results


def _jobs_for(
    commands: Sequence[Command],
    enterprise_id: int,
    row_id: int,
    call: Call,
    integration_id: int,
    jobs: list[NewJob],
    notifications: list[tuple[int, NewJob]],
) -> None:
    # The payloads read the call as it is now, after this group's events: as track_events did.
    for command in commands:
        jobs.append(
            NewJob(
                job_kind(command),
                command_job_payload(
                    call_row_id=row_id, enterprise_id=enterprise_id, call=call, command=command
                ),
                ordering_key=ordering_key(row_id),
                integration_id=integration_id,
                call_id=row_id,
            )
        )
        if isinstance(command, FinishCall) and is_missed_inbound(call, command):
            # After the finish (so Bitrix24 knows the call), and outside the call's ordering
            # key: a notification that fails must never hold back the call's recording.
            payload = missed_call_payload(
                call_row_id=row_id, enterprise_id=enterprise_id, call=call, finish=command
            )
            notification = NewJob(
                NOTIFY_MISSED_JOB, payload, integration_id=integration_id, call_id=row_id
            )
            notifications.append((len(jobs) - 1, notification))
