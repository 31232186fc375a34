"""The chunk cache shared by the image reader and the scan's comparison: bounded, one fetch per chunk."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from cbtbackup.errors import CorruptDataError
from cbtbackup.pipeline.chunk_cache import ChunkCache


def test_threads_that_want_the_same_chunk_share_one_fetch() -> None:
    release = threading.Event()
    calls: list[bytes] = []

    def slow(digest: bytes) -> bytes:
        calls.append(digest)
        release.wait(10)
        return digest * 4

    cache = ChunkCache(slow, 1 << 20)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(cache.get, b"a") for _ in range(4)]
        threading.Timer(0.2, release.set).start()
        assert [f.result() for f in futures] == [b"aaaa"] * 4
    assert calls == [b"a"] and cache.fetched == 1


def test_a_failed_fetch_reaches_every_waiter_and_is_not_kept() -> None:
    attempts = []

    def broken_once(digest: bytes) -> bytes:
        attempts.append(digest)
        if len(attempts) == 1:
            raise CorruptDataError("bad chunk")
        return b"good"

    cache = ChunkCache(broken_once, 1 << 20)
    with pytest.raises(CorruptDataError):
        cache.get(b"x")
    assert b"x" not in cache
    assert cache.get(b"x") == b"good" and len(attempts) == 2


def test_the_least_recently_used_chunks_go_first_past_the_bound() -> None:
    cache = ChunkCache(lambda d: d * 10, 30)  # three chunks of 10 bytes fit
    for d in (b"a", b"b", b"c"):
        cache.get(d)
    cache.get(b"a")  # used again: b is now the oldest
    cache.get(b"d")
    assert b"b" not in cache and all(d in cache for d in (b"a", b"c", b"d"))
    assert cache.fetched == 4
