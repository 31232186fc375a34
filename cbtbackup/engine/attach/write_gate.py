"""Holding the writes to an attached volume for a moment, so that several volumes can be taken at one instant.

A consistency group of attached volumes lives in several daemons, and no lock spans them. So the backup
first *holds* every member — each daemon stops admitting writes and waits for the ones in flight to land —
then takes each snapshot, then resumes them all. A write acknowledged before its volume was held is in the
snapshot; a write issued after it waits, and with it every write that an application orders after it (a
log record before its commit record), on any member. So no snapshot of the group holds a write whose
predecessor is missing from another.

A hold never outlives its purpose: it ends on ``resume``, when the connection that asked for it closes (the
backup died), or after ``limit`` seconds, whichever is first; a take after the end is refused.
"""

from __future__ import annotations

import secrets
import threading
import time

from cbtbackup.errors import BusyError

HOLD_LIMIT = 30.0  # seconds a volume's writes may be held, at most
DRAIN_LIMIT = 10.0  # seconds to wait for the writes in flight when a hold starts


class WriteGate:
    def __init__(self, limit: float = HOLD_LIMIT) -> None:
        self._cond = threading.Condition()
        self._inflight = 0
        self._token: str | None = None
        self._until = 0.0
        self._limit = limit

    # -- the write path ------------------------------------------------------------------------------------

    def enter(self) -> None:
        with self._cond:
            while self._held():
                self._cond.wait(max(0.0, self._until - time.monotonic()))
            self._inflight += 1

    def leave(self) -> None:
        with self._cond:
            self._inflight -= 1
            self._cond.notify_all()

    # -- the control side ----------------------------------------------------------------------------------

    def hold(self, drain: float = DRAIN_LIMIT) -> str:
        """Stop admitting writes and wait for those in flight; a token for :meth:`resume`."""
        with self._cond:
            if self._held():
                raise BusyError("the volume's writes are held by another backup's group take")
            token = secrets.token_hex(8)
            self._token, self._until = token, time.monotonic() + self._limit
            if not self._cond.wait_for(lambda: self._inflight == 0, drain):
                self._token = None
                self._cond.notify_all()
                raise BusyError(f"writes to the volume did not finish within {drain:.0f} s; not held")
            return token

    def holding(self, token: str) -> bool:
        with self._cond:
            return self._held() and self._token == token

    def resume(self, token: str) -> None:
        with self._cond:
            if self._token == token:
                self._token = None
                self._cond.notify_all()

    def _held(self) -> bool:
        if self._token is not None and time.monotonic() >= self._until:
            self._token = None  # held too long: writers go on, and a take under this hold is refused
            self._cond.notify_all()
        return self._token is not None
