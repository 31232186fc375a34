"""The reading core every reader of backups takes chunks from: one fetch per chunk at a time, held until
the last use or least recently used first out within a bound, fetched ahead along a plan, failures reach
whoever asks and are never turned into bytes."""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cbtbackup.errors import CorruptDataError
from cbtbackup.pipeline.chunk_source import ChunkSource


def test_threads_that_want_the_same_chunk_share_one_fetch() -> None:
    release = threading.Event()
    calls: list[bytes] = []

    def slow(digest: bytes) -> bytes:
        calls.append(digest)
        release.wait(10)
        return digest * 4

    chunks = ChunkSource(slow, keep_bytes=1 << 20)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(chunks.get, b"a") for _ in range(4)]
        threading.Timer(0.2, release.set).start()
        assert [f.result() for f in futures] == [b"aaaa"] * 4
    assert calls == [b"a"] and chunks.fetched == 1


def test_a_failed_fetch_reaches_every_waiter_and_is_not_kept() -> None:
    attempts = []

    def broken_once(digest: bytes) -> bytes:
        attempts.append(digest)
        if len(attempts) == 1:
            raise CorruptDataError("bad chunk")
        return b"good"

    chunks = ChunkSource(broken_once, keep_bytes=1 << 20)
    with pytest.raises(CorruptDataError):
        chunks.get(b"x")
    assert b"x" not in chunks
    assert chunks.get(b"x") == b"good" and len(attempts) == 2


def test_without_uses_the_least_recently_used_chunks_go_first_past_the_bound() -> None:
    chunks = ChunkSource(lambda d: d * 10, keep_bytes=30)  # three chunks of 10 bytes fit
    for d in (b"a", b"b", b"c"):
        chunks.get(d)
    chunks.get(b"a")  # used again: b is now the oldest
    chunks.get(b"d")
    assert b"b" not in chunks and all(d in chunks for d in (b"a", b"c", b"d"))
    assert chunks.fetched == 4


def test_with_uses_a_chunk_is_held_until_its_last_use_and_let_go_then() -> None:
    fetched: list[bytes] = []

    def fetch(d: bytes) -> bytes:
        fetched.append(d)
        return d * 10

    chunks = ChunkSource(fetch, uses=collections.Counter({b"p": 3, b"a": 1, b"b": 1}), keep_bytes=1 << 20)
    asks = [b"p", b"a", b"p", b"b", b"p"]
    for n, d in enumerate(asks):
        assert chunks.get(d) == d * 10
        chunks.release(d)
        assert d == b"p" or d not in chunks  # a chunk of one use goes after it
        assert (b"p" in chunks) == (b"p" in asks[n + 1:])  # p stays while a use is left
    assert fetched == [b"p", b"a", b"b"]  # p once for its three uses
    assert chunks.held_bytes == 0  # nothing is held after the last uses


def test_a_plan_is_fetched_ahead_in_parallel_and_a_bound_stops_it() -> None:
    started: list[bytes] = []
    lock = threading.Lock()
    gate = threading.Event()

    def fetch(d: bytes) -> bytes:
        with lock:
            started.append(d)
        gate.wait(10)
        return d * 100

    plan = [bytes([n]) for n in range(20)]
    chunks = ChunkSource(fetch, plan=plan, uses=collections.Counter(plan), fetchers=2)
    deadline = time.monotonic() + 5
    while len(started) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert sorted(started) == plan[:2]  # two fetchers, nothing asked yet: the plan's first two
    gate.set()
    deadline = time.monotonic() + 5
    while len(started) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert len(started) == 4  # ahead by twice the fetchers, and no further until asked
    for d in plan:
        assert chunks.get(d) == d * 100
        chunks.release(d)
    chunks.close()
    assert sorted(started) == plan and chunks.fetched == 20  # each fetched once, all ahead of the asking


def test_a_chunk_fetched_ahead_that_fails_raises_for_whoever_asks_for_it() -> None:
    def fetch(d: bytes) -> bytes:
        if d == b"bad":
            raise CorruptDataError("chunk bad is corrupt")
        return d

    plan = [b"a", b"bad", b"c"]
    chunks = ChunkSource(fetch, plan=plan, uses=collections.Counter(plan), fetchers=2)
    assert chunks.get(b"a") == b"a"
    with pytest.raises(CorruptDataError, match="corrupt"):
        chunks.get(b"bad")
    assert chunks.get(b"c") == b"c"
    chunks.close()


def test_prefetch_fetches_in_the_background_what_a_random_reader_names() -> None:
    fetched: list[bytes] = []
    chunks = ChunkSource(lambda d: fetched.append(d) or d, fetchers=2)  # type: ignore[func-returns-value]
    chunks.prefetch([b"x", b"y"])
    deadline = time.monotonic() + 5
    while not (b"x" in chunks and b"y" in chunks) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert chunks.get(b"x") == b"x" and chunks.get(b"y") == b"y"
    assert sorted(fetched) == [b"x", b"y"] and chunks.fetched == 2
    chunks.close()


def test_no_reader_of_backups_fetches_a_chunk_but_through_the_reading_core() -> None:
    """The rule that keeps one read path: ``Repository.get_chunk`` is called only by the reading core;
    everything else hands it to a ChunkSource (a speed-up or a check added there reaches every reader)."""
    import re
    from pathlib import Path

    import cbtbackup

    root = Path(cbtbackup.__file__).parent
    calls = {str(path.relative_to(root)) for path in root.rglob("*.py")
             if re.search(r"\bget_chunk\(", path.read_text()) and path.name != "repository.py"}
    assert calls == set(), f"chunks fetched outside the reading core in {sorted(calls)}"
    handed = {str(path.relative_to(root)) for path in root.rglob("*.py")
              if "repo.get_chunk" in path.read_text()}
    makers = {str(path.relative_to(root)) for path in root.rglob("*.py") if "ChunkSource(" in path.read_text()}
    assert handed - makers <= {"pipeline/backup.py"}  # the scan hands it to PreviousImage, which makes one
