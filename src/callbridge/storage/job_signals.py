"""Jobs this process committed, told at once to this process's consumers.

A transaction that goes through a SQLAlchemy ``Session`` is seen by the dispatcher's commit
hooks; the webhook intake commits plain SQL on the driver connection, which no hook sees. It
announces what it queued here instead, after the commit, so a dispatcher in the same process
(``callbridge run``) sends a ringing call's register at once rather than at its next poll (on
SQLite nothing else would tell it; on PostgreSQL this saves waiting for the NOTIFY).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping

__all__ = ["CommitListener", "announce_committed", "subscribe"]

logger = logging.getLogger(__name__)

#: Called with, by job kind, the integrations (portals) whose jobs were just committed.
CommitListener = Callable[[Mapping[str, Collection[int | None]]], None]

_listeners: list[CommitListener] = []


def subscribe(listener: CommitListener) -> Callable[[], None]:
    """Hear of every announced commit until the returned function is called."""
    _listeners.append(listener)

    def unsubscribe() -> None:
        if listener in _listeners:
            _listeners.remove(listener)

    return unsubscribe


def announce_committed(queued: Mapping[str, Collection[int | None]]) -> None:
    """Tell the listeners that jobs of these kinds (for these integrations) were committed."""
    if not queued:
        return
    for listener in list(_listeners):
        try:
            listener(queued)
        except Exception:  # a listener's bug must not fail a committed request
            logger.exception("a listener of committed jobs failed")
