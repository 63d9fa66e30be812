"""Routing AMI messages: responses to the actions that asked, everything else to the listener.

Every action carries a unique ``ActionID``; the PBX copies it into the response. Actions that
answer with a list (``CoreShowChannels``, ``QueueStatus``...) answer ``Response: Success`` with
``EventList: start``, then events carrying the same ActionID, then a ``...Complete`` event with
``EventList: Complete``. The :class:`Correlator` collects those; any other message is an event
for ``async for``. It knows nothing about sockets: the client feeds it parsed messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from callbridge.pbx.ami.protocol import Event, Message, Response

__all__ = ["ActionResult", "Correlator"]


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What the PBX answered to one action: the response, and the events of a list action."""

    response: Response
    events: tuple[Event, ...] = ()


@dataclass(slots=True)
class _Pending:
    action: str
    future: asyncio.Future[ActionResult]
    collect: bool
    response: Response | None = None
    events: list[Event] = field(default_factory=list)


class Correlator:
    """Matches responses (and list events) to pending actions by ``ActionID``.

    Attributes
    ----------
    unmatched
        Responses whose ActionID nobody waits for (late answers to timed-out actions).
    """

    def __init__(self) -> None:
        self._pending: dict[str, _Pending] = {}
        # List actions whose events are arriving; while none are, events skip the ActionID
        # lookup (which would make a lazily parsed event parse all its headers).
        self._collecting = 0
        self.unmatched = 0

    def __len__(self) -> int:
        return len(self._pending)

    def register(
        self, action: str, action_id: str, *, collect: bool = False
    ) -> asyncio.Future[ActionResult]:
        """Expect an answer to ``action_id``; ``collect`` gathers its EventList events too."""
        if action_id in self._pending:
            raise ValueError(f"ActionID {action_id!r} is already in flight")
        future: asyncio.Future[ActionResult] = asyncio.get_running_loop().create_future()
        self._pending[action_id] = _Pending(action, future, collect)
        return future

    def discard(self, action_id: str) -> None:
        """Stop waiting for ``action_id`` (timed out or cancelled); a late answer is dropped."""
        pending = self._pending.pop(action_id, None)
        if pending is None:
            return
        if pending.collect and pending.response is not None:
            self._collecting -= 1
        if not pending.future.done():
            pending.future.cancel()

    def feed(self, message: Message) -> Event | None:
        """Route one message; return it when it is an event for the listener, else None."""
        if isinstance(message, Response):
            self._on_response(message)
            return None
        if not isinstance(message, Event):
            return None
        if not self._collecting:
            return message
        action_id = message.action_id
        if action_id is not None:
            pending = self._pending.get(action_id)
            if pending is not None and pending.collect and pending.response is not None:
                if message.event_list == "complete" or message.name.endswith("Complete"):
                    del self._pending[action_id]
                    self._collecting -= 1
                    _resolve(pending.future, ActionResult(pending.response, tuple(pending.events)))
                else:
                    pending.events.append(message)
                return None
        return message

    def _on_response(self, response: Response) -> None:
        action_id = response.action_id
        pending = self._pending.get(action_id) if action_id is not None else None
        if pending is None or action_id is None:
            self.unmatched += 1
            return
        if pending.collect and response.success:
            # The list's events follow; resolve on the "...Complete" event.
            pending.response = response
            self._collecting += 1
            return
        del self._pending[action_id]
        _resolve(pending.future, ActionResult(response))

    def fail_all(self, error: Callable[[str, str], BaseException]) -> int:
        """Fail every pending action with ``error(action, action_id)``; return how many."""
        pending, self._pending = self._pending, {}
        self._collecting = 0
        for action_id, item in pending.items():
            if not item.future.done():
                item.future.set_exception(error(item.action, action_id))
        return len(pending)


def _resolve(future: asyncio.Future[ActionResult], result: ActionResult) -> None:
    if not future.done():
        future.set_result(result)
