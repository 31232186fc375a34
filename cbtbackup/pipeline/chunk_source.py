"""The reading core: the one way every reader of backups gets its chunks.

Restore (to a file or device, to standard output, into RBD, to qcow2 through a file), restore
``--onto-existing``, verify, the scan's comparison with the previous image, mount, NBD and export-diff all
take chunks from a :class:`ChunkSource`, so a gain here is a gain for all of them. A source:

- fetches a chunk through :meth:`Repository.get_chunk` — read the object, authenticate and decrypt it,
  decompress it, check its digest — and raises ``CorruptChunkError`` to whoever asked, never bytes;
- fetches each chunk once at a time: a thread asking for a chunk another is fetching waits for that fetch;
- holds chunks in memory bounded in bytes. A reader that knows from the map how often it will ask for each
  chunk gives those ``uses``: a chunk is then held until its last use and let go at once after it (a
  packed incremental's chunk serves blocks spread over much of the image). Without uses, the least
  recently used goes first. Past the bound the least recently used goes either way, and is fetched again
  if it is asked for later: memory stays bounded whatever the chain;
- reads ahead: a ``plan`` (the digests in the order they will first be asked for) is fetched by a pool a
  bounded number of chunks ahead of the reader; a random-access reader names what to fetch ahead with
  :meth:`prefetch`. Fetchers do the decoding too, so a reader consuming in one thread still decodes in
  parallel.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from cbtbackup.errors import CbtError

FetchChunk = Callable[[bytes], bytes]
KEEP_BYTES = 64 << 20


class ChunkSource:
    """Verified chunks by digest; safe to share between threads."""

    def __init__(self, fetch: FetchChunk, *, keep_bytes: int = KEEP_BYTES,
                 uses: collections.Counter[bytes] | None = None, plan: Iterable[bytes] | None = None,
                 fetchers: int = 0) -> None:
        self._fetch = fetch
        self.keep_bytes = keep_bytes
        self._uses = uses
        self._plan: Iterator[bytes] | None = iter(plan) if plan is not None else None
        self._fetchers = fetchers
        self._depth = 2 * fetchers  # chunks fetched ahead and not yet asked for, at most
        self._pool = ThreadPoolExecutor(fetchers, thread_name_prefix="fetch") if fetchers else None
        self._held: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self._held_bytes = 0
        self._fetching: dict[bytes, Future[bytes]] = {}
        self._ahead: set[bytes] = set()  # fetched (or being fetched) ahead, not asked for yet
        self._failed: dict[bytes, BaseException] = {}  # fetched ahead and failed: the next ask raises it
        self._lock = threading.Lock()
        self._closed = False
        self.fetched = 0  # chunks taken from the repository, not from memory
        with self._lock:
            self._top_up()

    def __contains__(self, digest: bytes) -> bool:
        """Whether the chunk is held in memory now."""
        with self._lock:
            return digest in self._held

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    def get(self, digest: bytes) -> bytes:
        """The verified chunk: from memory, from a fetch under way, or fetched now in this thread."""
        with self._lock:
            self._ahead.discard(digest)
            failure = self._failed.pop(digest, None)
            if failure is not None:
                self._top_up()
                raise failure
            data = self._held.get(digest)
            if data is not None:
                self._held.move_to_end(digest)
                self._top_up()
                return data
            future = self._fetching.get(digest)
            mine = future is None
            if future is None:
                future = self._fetching[digest] = Future()
            self._top_up()
        if mine:
            self._run(digest, future, ahead=False)
        return future.result()

    def release(self, digest: bytes) -> None:
        """One of the uses given at the start is over; after the last, the chunk is let go."""
        if self._uses is None:
            return
        with self._lock:
            left = self._uses[digest] - 1
            if left > 0:
                self._uses[digest] = left
                return
            self._uses.pop(digest, None)
            data = self._held.pop(digest, None)
            if data is not None:
                self._held_bytes -= len(data)

    def prefetch(self, digests: Iterable[bytes]) -> None:
        """Fetch these in the background (a random-access reader's read-ahead), as far as the depth allows."""
        if self._pool is None:
            return
        with self._lock:
            # Bounded by fetches under way, not by chunks not yet asked for: a random reader may never
            # ask for what it read ahead.
            running = sum(1 for d in self._ahead if d in self._fetching)
            for digest in digests:
                if running >= self._depth:
                    break
                if digest not in self._held and digest not in self._fetching:
                    self._start_ahead(digest)
                    running += 1

    def close(self) -> None:
        """Stop fetching ahead; a fetch under way finishes first. Nothing may be asked for afterwards."""
        with self._lock:
            self._closed = True
            self._plan = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for future in self._fetching.values():  # cancelled before they ran
                if not future.done():
                    future.set_exception(CbtError("the chunk source was closed"))
            self._fetching.clear()

    # -- inside ------------------------------------------------------------------------------------------

    def _top_up(self) -> None:
        """Start fetches of the plan's next chunks while fewer than the depth are ahead (lock held)."""
        while self._plan is not None and len(self._ahead) < self._depth:
            digest = next(self._plan, None)
            if digest is None:
                self._plan = None
                return
            self._start_ahead(digest)

    def _start_ahead(self, digest: bytes) -> None:
        if self._closed or self._pool is None or digest in self._held or digest in self._fetching \
                or digest in self._failed:
            return
        future: Future[bytes] = Future()
        self._fetching[digest] = future
        self._ahead.add(digest)
        self._pool.submit(self._run, digest, future, True)

    def _run(self, digest: bytes, future: Future[bytes], ahead: bool) -> None:
        try:
            data = self._fetch(digest)
        except BaseException as e:
            with self._lock:
                self._fetching.pop(digest, None)
                if ahead and digest in self._ahead:  # nobody has asked yet: keep the failure for who does
                    self._failed[digest] = e
                    self._ahead.discard(digest)
            if not future.done():
                future.set_exception(e)
            return
        with self._lock:
            self._fetching.pop(digest, None)
            self.fetched += 1
            if self._uses is None or self._uses.get(digest, 0) > 0:
                self._hold(digest, data)
            self._top_up()
        if not future.done():
            future.set_result(data)

    def _hold(self, digest: bytes, data: bytes) -> None:
        old = self._held.pop(digest, None)
        if old is not None:
            self._held_bytes -= len(old)
        self._held[digest] = data
        self._held_bytes += len(data)
        while self._held_bytes > self.keep_bytes and len(self._held) > 1:
            gone, old = self._held.popitem(last=False)
            self._held_bytes -= len(old)
            self._ahead.discard(gone)  # fetched ahead and pushed out: no longer counts as ahead
