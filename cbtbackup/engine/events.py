"""Snapshot events (blksnap's ``corrupted`` and ``no_space``) and the queue they wait in."""

from __future__ import annotations

import collections
import dataclasses
import enum
import threading
import time


class EventCode(enum.IntEnum):
    """Codes as in the blksnap ABI 2.0."""

    CORRUPTED = 0
    NO_SPACE = 1


@dataclasses.dataclass(frozen=True)
class SnapshotEvent:
    """One event. ``volume`` names the volume for ``corrupted``; ``requested_bytes`` is set for ``no_space``."""

    code: EventCode
    time_ns: int
    volume: str = ""
    errno: int = 0
    requested_bytes: int = 0


class EventQueue:
    """A thread-safe FIFO that a waiter can block on with a timeout."""

    def __init__(self) -> None:
        self._events: collections.deque[SnapshotEvent] = collections.deque()
        self._cond = threading.Condition()

    def put(self, code: EventCode, **fields: object) -> None:
        event = SnapshotEvent(code, time.time_ns(), **fields)  # type: ignore[arg-type]
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()

    def wait(self, timeout: float | None) -> SnapshotEvent | None:
        """The oldest event, waiting up to ``timeout`` seconds (None: forever); None on timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._events), timeout):
                return None
            return self._events.popleft()
