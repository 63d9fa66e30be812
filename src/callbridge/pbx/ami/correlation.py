"""Routing AMI messages: responses to the actions that asked, everything else to the listener.

Every action carries a unique ``ActionID``; the PBX copies it into the response. Actions that
answer with a list (``CoreShowChannels``, ``QueueStatus``...) answer ``Response: Success`` with
``EventList: start``, then events carrying the same ActionID, then a ``...Complete`` event with
``EventList: Complete``. The :class:`Correlator` collects those; any other message is an event
for ``async for``. It knows nothing about sockets: the client feeds it parsed messages.

A list asked for ``in_stream`` is also delivered to the event stream, as one :class:`ListResult`
at the place of its ``Response``: events before it are older than the list, events after it
newer. Asterisk writes a list's events in one go, but a server that interleaves events with them
(they are newer than the list) has those held back until the list is complete, then released
after it, so stream order holds either way.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from callbridge.pbx.ami.protocol import Event, Message, Response

__all__ = ["ActionResult", "Correlator", "ListResult"]


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What the PBX answered to one action: the response, and the events of a list action."""

    response: Response
    events: tuple[Event, ...] = ()


class ListResult(Event):
    """Marker in the event stream: a list action's answer, where the PBX sent it.

    Its :attr:`events` are the list's events (the closing ``...Complete`` event left out);
    the events before the marker in the stream are older than the list, those after it newer.
    """

    __slots__ = ("events",)

    def __init__(
        self,
        items: Iterable[tuple[str, str]],
        *,
        unparsed: Sequence[str] = (),
        output: Sequence[str] = (),
        events: Sequence[Event] = (),
    ) -> None:
        super().__init__(items, unparsed=unparsed, output=output)
        #: The list's events, in the order the PBX sent them.
        self.events: tuple[Event, ...] = tuple(events)

    @classmethod
    def create(cls, action: str, action_id: str, events: Sequence[Event]) -> ListResult:
        """A marker carrying the answer to ``action`` (sent with ``action_id``)."""
        return cls(
            [
                ("Event", "CallbridgeListResult"),
                ("Action", action),
                ("ActionID", action_id),
                ("ListItems", str(len(events))),
            ],
            events=events,
        )

    @property
    def action(self) -> str:
        """The list action this answers (``CoreShowChannels``)."""
        return self.get("Action") or ""


@dataclass(slots=True)
class _Pending:
    action: str
    action_id: str
    future: asyncio.Future[ActionResult]
    collect: bool
    in_stream: bool = False
    response: Response | None = None
    events: list[Event] = field(default_factory=list)
    #: Set when the list is complete (or abandoned: ``None`` result, no marker).
    done: bool = False
    result: ActionResult | None = None


class Correlator:
    """Matches responses (and list events) to pending actions by ``ActionID``.

    Attributes
    ----------
    unmatched
        Responses whose ActionID nobody waits for (late answers to timed-out actions).
    released
        Events ready for the stream that :meth:`feed` could not return (a completed in-stream
        list's marker, the events held behind it); take them with :meth:`take_released`.
    """

    def __init__(self) -> None:
        self._pending: dict[str, _Pending] = {}
        # List actions whose events are arriving; while none are, events skip the ActionID
        # lookup (which would make a lazily parsed event parse all its headers).
        self._collecting = 0
        # From the Response of the oldest in-stream list still arriving: that list's place,
        # then events and later in-stream lists, in stream order. Empty otherwise.
        self._backlog: deque[_Pending | Event] = deque()
        self.released: list[Event] = []
        self.unmatched = 0

    def __len__(self) -> int:
        return len(self._pending)

    def register(
        self, action: str, action_id: str, *, collect: bool = False, in_stream: bool = False
    ) -> asyncio.Future[ActionResult]:
        """Expect an answer to ``action_id``; ``collect`` gathers its EventList events too.

        ``in_stream`` (with ``collect``): also release the list as a :class:`ListResult` at the
        place of its response in the event stream.
        """
        if action_id in self._pending:
            raise ValueError(f"ActionID {action_id!r} is already in flight")
        future: asyncio.Future[ActionResult] = asyncio.get_running_loop().create_future()
        self._pending[action_id] = _Pending(
            action, action_id, future, collect, in_stream=collect and in_stream
        )
        return future

    def discard(self, action_id: str) -> None:
        """Stop waiting for ``action_id`` (timed out or cancelled); a late answer is dropped.

        Events held behind an in-stream list that will not come are released.
        """
        pending = self._pending.pop(action_id, None)
        if pending is None:
            return
        if pending.collect and pending.response is not None:
            self._collecting -= 1
        if not pending.future.done():
            pending.future.cancel()
        if not pending.done:
            pending.done = True
            if self._backlog:
                self._release()

    def take_released(self) -> list[Event]:
        """The events released since the last call, in stream order."""
        released, self.released = self.released, []
        return released

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
                    result = ActionResult(pending.response, tuple(pending.events))
                    pending.done = True
                    pending.result = result
                    _resolve(pending.future, result)
                    if pending.in_stream:
                        self._release()
                else:
                    pending.events.append(message)
                return None
        if self._backlog:
            # Newer than an in-stream list still arriving: it goes after that list.
            self._backlog.append(message)
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
            if pending.in_stream:
                # The list's place in the stream: what follows is newer.
                self._backlog.append(pending)
            return
        del self._pending[action_id]
        pending.done = True
        _resolve(pending.future, ActionResult(response))

    def _release(self) -> None:
        """Move what leads the backlog, up to a list still arriving, to :attr:`released`."""
        backlog = self._backlog
        released = self.released
        while backlog:
            head = backlog[0]
            if isinstance(head, _Pending):
                if not head.done:
                    return
                if head.result is not None:
                    released.append(
                        ListResult.create(head.action, head.action_id, head.result.events)
                    )
            else:
                released.append(head)
            backlog.popleft()

    def fail_all(self, error: Callable[[str, str], BaseException]) -> int:
        """Fail every pending action with ``error(action, action_id)``; return how many.

        Events held behind in-stream lists are released (they did arrive); the lists are not.
        """
        pending, self._pending = self._pending, {}
        self._collecting = 0
        for action_id, item in pending.items():
            item.done = True
            if not item.future.done():
                item.future.set_exception(error(item.action, action_id))
        self._release()
        return len(pending)


def _resolve(future: asyncio.Future[ActionResult], result: ActionResult) -> None:
    if not future.done():
        future.set_result(result)
