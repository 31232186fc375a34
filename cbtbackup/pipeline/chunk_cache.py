"""Verified chunks kept in memory, bounded in bytes, least recently used first out; safe to share between
threads. Fetches run outside the lock, so different chunks are fetched in parallel; a thread that wants a
chunk another is fetching waits for that fetch instead of starting its own."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from concurrent.futures import Future

FetchChunk = Callable[[bytes], bytes]


class ChunkCache:
    def __init__(self, fetch: FetchChunk, limit: int) -> None:
        self._fetch = fetch
        self.limit = limit
        self._chunks: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self._bytes = 0
        self._fetching: dict[bytes, Future[bytes]] = {}
        self._lock = threading.Lock()
        self.fetched = 0  # chunks taken from the repository, not from memory

    def __contains__(self, digest: bytes) -> bool:
        with self._lock:
            return digest in self._chunks

    def discard(self, digest: bytes) -> None:
        """Let a chunk go before its turn (nobody needs it again); one being fetched stays until it is."""
        with self._lock:
            data = self._chunks.pop(digest, None)
            if data is not None:
                self._bytes -= len(data)

    def get(self, digest: bytes) -> bytes:
        """The chunk, from memory or fetched once (the fetch's error reaches every thread that waited)."""
        with self._lock:
            data = self._chunks.get(digest)
            if data is not None:
                self._chunks.move_to_end(digest)
                return data
            waiting = self._fetching.get(digest)
            if waiting is None:
                mine: Future[bytes] = Future()
                self._fetching[digest] = mine
        if waiting is not None:
            return waiting.result()
        try:
            data = self._fetch(digest)
        except BaseException as e:
            with self._lock:
                del self._fetching[digest]
            mine.set_exception(e)
            raise
        with self._lock:
            del self._fetching[digest]
            self.fetched += 1
            self._chunks[digest] = data
            self._bytes += len(data)
            while self._bytes > self.limit and len(self._chunks) > 1:
                _, old = self._chunks.popitem(last=False)
                self._bytes -= len(old)
        mine.set_result(data)
        return data
