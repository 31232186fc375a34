"""Locks on every store: contenders never hold a conflicting scope at once; shared scopes coexist."""

from __future__ import annotations

import threading
import time

import pytest

from cbtbackup.repo.conditional_probe import honours_conditional_create
from cbtbackup.repo.locks import LockedError, Locker, LockInfo, LockLostError
from cbtbackup.repo.store import Store
from tests.repo.unconditional_store import IgnoresConditionalWrites


@pytest.mark.parametrize("conditional", ["honoured", "ignored"])
def test_contenders_never_hold_together(store: Store, conditional: str) -> None:
    # Locks are write-then-look: they hold also where the server ignores If-None-Match.
    if conditional == "ignored":
        store = IgnoresConditionalWrites(store)
    locker = Locker(store)
    holding: list[int] = []
    overlaps: list[str] = []
    wins = [0]
    guard = threading.Lock()

    def contend(i: int) -> None:
        for _ in range(3):
            try:
                lock = locker.acquire(f"writer {i}", exclusive=("chain:a",), wait=20)
            except LockedError:
                continue
            with guard:
                holding.append(i)
                if len(holding) > 1:
                    overlaps.append(f"{holding}")
                wins[0] += 1
            time.sleep(0.01)
            with guard:
                holding.remove(i)
            lock.release()

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not overlaps
    assert wins[0] == 18  # with a long enough wait, every attempt gets its turn
    assert list(store.list("locks/")) == []


def test_shared_scopes_coexist_and_exclusive_waits(store: Store) -> None:
    locker = Locker(store)
    a = locker.acquire("backup a", exclusive=("chain:a",), shared=("repo",))
    b = locker.acquire("backup b", exclusive=("chain:b",), shared=("repo",))
    with pytest.raises(LockedError, match="backup a"):
        locker.acquire("prune", exclusive=("repo",))
    with pytest.raises(LockedError, match="backup b"):
        locker.acquire("backup b again", exclusive=("chain:b",))
    a.release()
    b.release()
    with locker.acquire("prune", exclusive=("repo",)), pytest.raises(LockedError, match="prune"):
        locker.acquire("backup", exclusive=("chain:a",), shared=("repo",))


def test_a_removed_lock_is_noticed_before_committing(store: Store) -> None:
    locker = Locker(store)
    lock = locker.acquire("backup", exclusive=("chain:a",))
    lock.check()
    assert [i.command for i, _ in locker.remove(everything=True)] == ["backup"]
    with pytest.raises(LockLostError, match="removed"):
        lock.check()
    lock.release()


def test_expired_locks_of_other_hosts_are_stale() -> None:
    now = time.time()
    other = LockInfo("x", "elsewhere", "", 1, 0, "backup", now - 100, now - 100, 30, (), ("chain:a",))
    assert other.stale(now) == "not refreshed for 100 s"
    fresh = LockInfo("y", "elsewhere", "", 1, 0, "backup", now, now, 30, (), ("chain:a",))
    assert fresh.stale(now) is None
    assert fresh.conflicts(other) and not fresh.conflicts(LockInfo("z", "h", "", 1, 0, "b", now, now, 30,
                                                                  (), ("chain:b",)))


def test_init_learns_whether_the_store_honours_conditional_writes(store: Store) -> None:
    assert honours_conditional_create(store)
    assert not honours_conditional_create(IgnoresConditionalWrites(store))
    assert list(store.list("")) == []  # the probe leaves nothing behind
