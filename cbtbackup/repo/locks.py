"""Repository locks: who may write what at the same time, across processes and hosts.

A lock is an object ``locks/<id>`` (JSON) naming its holder (host, boot, pid, command), when it was taken
and last refreshed, and the *scopes* it claims, each shared or exclusive:

- ``chain:<name>`` — exclusive for a backup, forget or synthesize of that chain: one writer per chain;
- ``repo`` — shared by everything that adds manifests (backups, synthesize); exclusive for the delete
  phase of prune, so no backup can reuse a chunk while prune deletes;
- ``manifests`` — exclusive for forget, which rewrites manifests in place; shared for the whole of a prune,
  whose recheck assumes that manifests only ever appear.

Taking a lock is *write, then look*: the lock object is created with a conditional put (never
check-then-write), then every lock in the repository is listed. If a live lock conflicts, the newer of the
two backs off (deletes its object) and the older waits for it to go; so two contenders never both hold,
because whichever looks last sees the other's object. Ordering is by the creation time written in the
objects, which both contenders read alike. A stale lock — its process is gone on this host (or the host
rebooted), or it was not refreshed for its time to live — is removed with a notice. The holder refreshes
its object in a thread, and checks that it still holds it before it commits anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from cbtbackup.errors import BusyError, CbtError, CorruptDataError, NotFoundError

LOCKS_PREFIX = "locks/"
DEFAULT_TTL = 30 * 60.0  # seconds without a refresh after which a lock of another host is stale
SETTLE_SECONDS = 10.0  # how long an older contender waits for a newer one to back off
Notice = Callable[[str], None]


class LockedError(BusyError):
    """Another process holds a conflicting lock."""


class LockLostError(BusyError):
    """The lock was removed (by ``unlock`` or as stale) while its holder ran: nothing may be committed."""


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> int:
    """The start time of ``pid`` in clock ticks since boot (tells a reused pid apart), or 0."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


@dataclasses.dataclass(frozen=True)
class LockInfo:
    id: str
    host: str
    boot: str
    pid: int
    pid_start: int
    command: str
    created: float
    refreshed: float
    ttl: float
    shared: tuple[str, ...] = ()
    exclusive: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return LOCKS_PREFIX + self.id

    def to_bytes(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> LockInfo:
        d: dict[str, Any] = json.loads(raw)
        return cls(str(d["id"]), str(d["host"]), str(d.get("boot", "")), int(d["pid"]), int(d.get("pid_start", 0)),
                   str(d["command"]), float(d["created"]), float(d["refreshed"]), float(d["ttl"]),
                   tuple(d.get("shared", ())), tuple(d.get("exclusive", ())))

    def conflicts(self, other: LockInfo) -> bool:
        mine, theirs = set(self.exclusive), set(other.exclusive)
        return bool(mine & (theirs | set(other.shared)) or theirs & set(self.shared))

    def stale(self, now: float) -> str | None:
        """Why this lock no longer protects anything, or None while its holder may still be running."""
        if self.host == os.uname().nodename and self.boot and self.boot == _boot_id():
            start = _process_start(self.pid)
            if start == 0:
                return f"process {self.pid} is gone"
            if self.pid_start and start != self.pid_start:
                return f"process {self.pid} is another program now"
            return None
        if self.host == os.uname().nodename and self.boot and self.boot != _boot_id():
            return "this host rebooted since"
        if now - self.refreshed > self.ttl:
            return f"not refreshed for {int(now - self.refreshed)} s"
        return None

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.created))
        return f"{self.command} (pid {self.pid} on {self.host}, since {when})"


class HeldLock:
    """A lock this process holds; refreshed in a thread until released."""

    def __init__(self, locker: Locker, info: LockInfo) -> None:
        self._locker = locker
        self.info = info
        self._stop = threading.Event()
        self._lost: str | None = None
        self._thread = threading.Thread(target=self._refresh, name="lock-refresh", daemon=True)
        self._thread.start()

    def _refresh(self) -> None:
        interval = max(1.0, self.info.ttl / 10)
        while not self._stop.wait(interval):
            try:
                if self._locker.store.stat(self.info.key) is None:
                    self._lost = "the lock was removed while this ran"
                    return
                self.info = dataclasses.replace(self.info, refreshed=time.time())
                self._locker.store.put(self.info.key, self._locker.seal(self.info))
            except CbtError:
                continue  # a passing failure: the next refresh tries again, well within the time to live

    def check(self) -> None:
        """Raise :class:`LockLostError` unless this process still holds the lock (call before committing)."""
        if self._lost is None:
            try:
                raw = self._locker.store.get(self.info.key)
                if self._locker.unseal(self.info.key, raw).id != self.info.id:
                    self._lost = "the lock object was replaced"
            except NotFoundError:
                self._lost = "the lock was removed while this ran (by unlock, or by a process that found it stale)"
        if self._lost is not None:
            raise LockLostError(f"{self._lost}; nothing was committed")

    def release(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(CbtError):  # left behind, it goes stale and the next taker removes it
            self._locker.store.delete(self.info.key)

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class Locker:
    """Takes, lists and removes the locks of one repository's store."""

    def __init__(self, store: Any, sealer: Any = None, ttl: float = DEFAULT_TTL) -> None:
        self.store = store
        self.sealer = sealer  # locks are sealed like every object of an encrypted repository
        self.ttl = ttl

    def seal(self, info: LockInfo) -> bytes:
        raw = info.to_bytes()
        return self.sealer.seal(info.key, raw) if self.sealer is not None else raw

    def unseal(self, key: str, raw: bytes) -> LockInfo:
        return LockInfo.from_bytes(self.sealer.open(key, raw) if self.sealer is not None else raw)

    def acquire(
        self,
        command: str,
        *,
        shared: tuple[str, ...] = (),
        exclusive: tuple[str, ...] = (),
        wait: float = 0.0,
        notice: Notice | None = None,
    ) -> HeldLock:
        """Hold the scopes, waiting up to ``wait`` seconds for conflicting holders; else :class:`LockedError`."""
        deadline = time.monotonic() + wait
        told = False
        while True:
            now = time.time()
            info = LockInfo(os.urandom(8).hex(), os.uname().nodename, _boot_id(), os.getpid(),
                            _process_start(os.getpid()), command, now, now, self.ttl, shared, exclusive)
            if not self.store.put_if_absent(info.key, self.seal(info)):
                continue  # a random id that exists already: take another
            try:
                holder = self._settle(info, notice)
            except BaseException:
                self.store.delete(info.key)
                raise
            if holder is None:
                return HeldLock(self, info)
            self.store.delete(info.key)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockedError(f"the repository is locked by {holder.describe()}; try again later, wait with "
                                  "--wait-lock, or remove a stale lock with 'cbtbackup unlock'")
            if notice is not None and not told:
                notice(f"waiting for the lock held by {holder.describe()}")
                told = True
            time.sleep(min(remaining, random.uniform(0.5, 2.0)))

    def _settle(self, mine: LockInfo, notice: Notice | None) -> LockInfo | None:
        """None once no live lock conflicts with ``mine``; else the holder it must give way to."""
        settle_until = time.monotonic() + SETTLE_SECONDS
        while True:
            live = []
            for other in self.read_all(skip=mine.key):
                if not other.conflicts(mine):
                    continue
                why = other.stale(time.time())
                if why is not None:
                    self.store.delete(other.key)
                    if notice is not None:
                        notice(f"removed a stale lock of {other.describe()}: {why}")
                    continue
                live.append(other)
            if not live:
                return None
            older = [o for o in live if (o.created, o.id) < (mine.created, mine.id)]
            if older or time.monotonic() > settle_until:
                return min(older or live, key=lambda o: (o.created, o.id))
            time.sleep(random.uniform(0.02, 0.1))  # only newer contenders: they see this lock and back off

    def read_all(self, skip: str = "") -> list[LockInfo]:
        found = []
        for obj in self.store.list(LOCKS_PREFIX):
            if obj.key == skip:
                continue
            try:
                found.append(self.unseal(obj.key, self.store.get(obj.key)))
            except NotFoundError:
                continue  # released meanwhile
            except (ValueError, KeyError, TypeError, CorruptDataError):
                continue  # not a lock this version can read; ``unlock --remove-all`` clears it
        return found

    def remove(self, everything: bool = False) -> list[tuple[LockInfo, str]]:
        """Remove stale locks (all locks with ``everything``); what was removed, and why."""
        removed = []
        for info in self.read_all():
            why = "removed by request" if everything else info.stale(time.time())
            if why is not None:
                self.store.delete(info.key)
                removed.append((info, why))
        if everything:  # also objects that are not readable locks
            for obj in self.store.list(LOCKS_PREFIX):
                self.store.delete(obj.key)
        return removed
