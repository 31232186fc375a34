"""Watching an image file for other processes with a Linux file lease.

A process that holds a *write lease* (``fcntl F_SETLEASE F_WRLCK``) on a file is the only one with the file
open, and the kernel tells it before anybody else's ``open`` of the file returns: the opener is held until
the holder gives the lease up. So while the lease is held no other process can have written the file, and
the holder learns of every opener — with whether it wants to read (the kernel asks for a downgrade) or to
write (it asks for the lease to go) — *before* that process can write a byte.

The kernel announces a break with a signal. One watcher thread per process receives it: the signal is
directed at that thread only (``F_SETOWN_EX`` with ``F_OWNER_TID``) and blocked there, so it never reaches
another thread or Python's own handlers, and the thread takes it with ``sigwaitinfo``. The callback runs in
the watcher thread before the lease is released, so whatever it records is recorded before the opener runs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import signal
import struct
import threading
from collections.abc import Callable

F_SETOWN_EX = 15
F_OWNER_TID = 0
BREAK_SIGNAL = signal.SIGRTMIN + 3
OnOpen = Callable[[bool], None]  # called with True when the opener wants to write


class LeaseUnavailable(Exception):
    """No lease could be taken; ``reason`` says why in words for the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Watcher:
    """The process's one watcher thread and the leases it serves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: dict[int, OnOpen] = {}
        self._tid = 0
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lease-watcher", daemon=True)
                self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        # SIGIO too: the kernel falls back to it for a file whose signal was reset, and it must not kill us.
        signals = {BREAK_SIGNAL, signal.SIGIO}
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        self._tid = threading.get_native_id()
        self._ready.set()
        while True:
            signal.sigwaitinfo(signals)
            with self._lock:
                watched = list(self._callbacks.items())
            for fd, on_open in watched:
                self._check(fd, on_open)

    def _check(self, fd: int, on_open: OnOpen) -> None:
        try:
            wanted = fcntl.fcntl(fd, fcntl.F_GETLEASE)
        except OSError:
            return  # closed meanwhile
        if wanted == fcntl.F_WRLCK:
            return  # not this file's lease
        with self._lock:
            if self._callbacks.get(fd) is not on_open:
                return
            del self._callbacks[fd]
        try:
            on_open(wanted == fcntl.F_UNLCK)
        finally:
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)

    def watch(self, fd: int, on_open: OnOpen) -> None:
        """Take a write lease on ``fd``; ``on_open`` runs once, when another process opens the file."""
        self._start()
        with self._lock:
            self._callbacks.pop(fd, None)
        try:
            fcntl.fcntl(fd, fcntl.F_SETSIG, BREAK_SIGNAL)
            fcntl.fcntl(fd, F_SETOWN_EX, struct.pack("ii", F_OWNER_TID, self._tid))
            with self._lock:
                self._callbacks[fd] = on_open
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        except OSError as e:
            with self._lock:
                self._callbacks.pop(fd, None)
            if e.errno in (errno.EAGAIN, errno.EBUSY):
                raise LeaseUnavailable("another process has it open") from None
            raise LeaseUnavailable(f"its file system cannot report other openers ({e.strerror})") from None

    def unwatch(self, fd: int) -> None:
        """Give the lease up (before closing ``fd``)."""
        with self._lock:
            self._callbacks.pop(fd, None)
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)

    def holds(self, fd: int) -> bool:
        with self._lock:
            if fd not in self._callbacks:
                return False
        try:
            return fcntl.fcntl(fd, fcntl.F_GETLEASE) == fcntl.F_WRLCK
        except OSError:
            return False



_watcher = _Watcher()


def watch(fd: int, on_open: OnOpen) -> None:
    """Hold a write lease on the regular file open at ``fd`` (opened read-write, by nobody else).

    Raises :class:`LeaseUnavailable` when another process has the file open or its file system has no
    leases. ``on_open(writer)`` runs once, in the watcher thread, before the other process's open returns;
    the lease is gone after it.
    """
    _watcher.watch(fd, on_open)


def unwatch(fd: int) -> None:
    _watcher.unwatch(fd)


def holds(fd: int) -> bool:
    """Whether the lease on ``fd`` is still held (no other process opened the file since ``watch``)."""
    return _watcher.holds(fd)


def open_elsewhere(fd: int) -> bool:
    """Whether another open file description of the same file exists (probe: a write lease fails).

    For a file that nobody watches; ``fd`` must be open read-write.
    """
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    except OSError as e:
        return e.errno in (errno.EAGAIN, errno.EBUSY)
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return False


__all__ = ["LeaseUnavailable", "holds", "open_elsewhere", "unwatch", "watch"]
