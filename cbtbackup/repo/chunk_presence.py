"""Whether a repository holds a chunk, asked once per chunk a backup writes.

On a local store the answer is a ``stat``: a few microseconds. On a remote store it is a HEAD request per
chunk — as many requests as the PUTs themselves. There the backup lists the chunk keys once at its start,
1000 keys a request, and answers from the listing, but only when that costs fewer requests than it saves:

- the first page is always read; if it is the last, the listing is complete (a new or small repository:
  one request instead of one per chunk);
- otherwise the position of its last key in the hash space estimates how many chunks the repository holds,
  and listing goes on only while the pages still to read are fewer than half the lookups expected; what it
  did not reach (keys sorting after the last one listed) is asked of the store, one HEAD each;
- at most :data:`MAX_LISTED` digests are kept (about 100 bytes each in memory).

Why a listing may be trusted for the length of a backup: a backup holds the repository's ``repo`` lock
shared, and the only thing that deletes chunks — prune's deleting phase — holds it exclusive, so a chunk
listed at the start is still there at the commit. A chunk put after the listing (another chain's backup)
is merely stored again, with the same content under the same key. A chunk the listing lacks is never
assumed to exist: a listing can only over-report work, never skip a chunk.
"""

from __future__ import annotations

from collections.abc import Callable

from cbtbackup.repo.store import Store

PAGE = 1000  # keys per listing request (S3's maximum)
MAX_LISTED = 2_000_000
_HASH_DIGITS = 12  # hex digits of a key's digest used to place it in the hash space


class ChunkPresence:
    def __init__(self, ask: Callable[[bytes], bool], key_of: Callable[[bytes], str],
                 listed: set[bytes] | None = None, listed_up_to: str | None = None, complete: bool = False) -> None:
        self._ask = ask
        self._key_of = key_of
        self._listed = listed or set()
        self._up_to = listed_up_to  # the last key the listing reached; keys after it were not listed
        self.complete = complete
        self.listing_requests = 0

    @property
    def listed(self) -> int:
        return len(self._listed)

    def has(self, digest: bytes) -> bool:
        if digest in self._listed:
            return True
        if self.complete or (self._up_to is not None and self._key_of(digest) <= self._up_to):
            return False
        return self._ask(digest)


def chunk_presence(store: Store, prefix: str, ask: Callable[[bytes], bool], key_of: Callable[[bytes], str],
                   expected_lookups: int, max_listed: int = MAX_LISTED) -> ChunkPresence:
    """A presence oracle for a backup about to look up about ``expected_lookups`` chunks under ``prefix``."""
    if not store.capabilities().remote or expected_lookups < 2:
        return ChunkPresence(ask, key_of)
    listed: set[bytes] = set()
    last = ""
    requests = 0
    more = True
    while more:
        page, more = store.list_page(prefix, last, PAGE)
        requests += 1
        for info in page:
            digest = _digest_of(info.key)
            if digest is not None:
                listed.add(digest)
        if page:
            last = page[-1].key
        if not page and more:  # a store that says "more" but gives nothing: stop rather than loop
            break
        if more and (len(listed) >= max_listed
                     or _pages_left(len(listed), last, requests) * 2 >= expected_lookups):
            break
    presence = ChunkPresence(ask, key_of, listed, last or None, complete=not more)
    presence.listing_requests = requests
    return presence


def _digest_of(key: str) -> bytes | None:
    try:
        digest = bytes.fromhex(key.rsplit("/", 1)[-1])
    except ValueError:
        return None
    return digest if len(digest) == 32 else None


def _pages_left(count: int, last_key: str, pages_read: int) -> float:
    """Pages a listing would still need, from how far into the hash space ``count`` keys reached."""
    try:
        reached = (int(last_key.rsplit("/", 1)[-1][:_HASH_DIGITS], 16) + 1) / 16 ** _HASH_DIGITS
    except ValueError:
        return float("inf")
    left: float = pages_read * (1 - reached) / reached
    return left
