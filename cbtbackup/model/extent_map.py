"""Extent maps: which stored chunk holds each byte range of an image.

A map is a sorted list of non-overlapping pieces ``(offset, length, digest, chunk_offset)``: the bytes
``[offset, offset + length)`` of the image are the bytes ``[chunk_offset, chunk_offset + length)`` of the
chunk whose BLAKE3 digest is ``digest``. The digest :data:`ZERO_DIGEST` (32 zero bytes) marks a range of
zeros that was recorded but not stored.

A backup's manifest holds the pieces it stored; :func:`overlay` lays a newer map over an older one, and
folding a chain from the newest backup to its full gives the *resolved* map of a point in time, which
:func:`resolve_chain` computes in one pass over all the chain's pieces. Pieces
live in packed arrays (about 56 bytes each), never one Python object per piece.
"""

from __future__ import annotations

import heapq
import struct
from array import array
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import blake3

DIGEST_SIZE = 32
ZERO_DIGEST = bytes(DIGEST_SIZE)
_RECORD = struct.Struct("<QIIx32s")  # offset, length, chunk_offset, pad, digest: 49 bytes on disk


class Piece(NamedTuple):
    offset: int
    length: int
    digest: bytes
    chunk_offset: int

    @property
    def end(self) -> int:
        return self.offset + self.length

    @property
    def is_zero(self) -> bool:
        return self.digest == ZERO_DIGEST


class ExtentMap:
    """A sorted, non-overlapping sequence of pieces in packed arrays."""

    __slots__ = ("_chunk_offsets", "_digests", "_lengths", "_offsets")

    def __init__(self) -> None:
        self._offsets = array("Q")
        self._lengths = array("I")
        self._chunk_offsets = array("I")
        self._digests = bytearray()

    def append(self, offset: int, length: int, digest: bytes, chunk_offset: int = 0) -> None:
        """Add a piece after the last one (pieces must come in offset order and not overlap)."""
        if length <= 0:
            raise ValueError("an extent needs a positive length")
        if self._offsets and offset < self._offsets[-1] + self._lengths[-1]:
            raise ValueError(f"extent at {offset} overlaps or precedes the previous one")
        self._offsets.append(offset)
        self._lengths.append(length)
        self._chunk_offsets.append(chunk_offset)
        self._digests += digest

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, i: int) -> Piece:
        return Piece(self._offsets[i], self._lengths[i], bytes(self._digests[i * 32: i * 32 + 32]),
                     self._chunk_offsets[i])

    def __iter__(self) -> Iterator[Piece]:
        for i in range(len(self)):
            yield self[i]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExtentMap) and self.to_bytes() == other.to_bytes()

    def __hash__(self) -> int:  # pragma: no cover - maps are mutable; equality is for tests
        raise TypeError("ExtentMap is unhashable")

    @property
    def lengths(self) -> array[int]:
        """Every piece's length, by index (read-only by convention: the map's own array)."""
        return self._lengths

    def digest_at(self, i: int) -> bytes:
        return bytes(self._digests[i * 32: i * 32 + 32])

    @property
    def end(self) -> int:
        """The end of the last piece (0 for an empty map)."""
        return self._offsets[-1] + self._lengths[-1] if self._offsets else 0

    def covers(self, size: int) -> bool:
        """Whether the pieces cover ``[0, size)`` with no gap."""
        pos = 0
        for offset, length in zip(self._offsets, self._lengths, strict=True):
            if offset != pos:
                return False
            pos += length
        return pos == size

    def stored_bytes(self) -> int:
        """Bytes in pieces that are not zeros."""
        return sum(p.length for p in self if not p.is_zero)

    def map_digest(self) -> bytes:
        """BLAKE3 over the canonical encoding: what a restore checks its resolved map against."""
        return blake3.blake3(self.to_bytes()).digest()

    def to_bytes(self) -> bytes:
        out = bytearray()
        for i in range(len(self)):
            out += _RECORD.pack(self._offsets[i], self._lengths[i], self._chunk_offsets[i], self.digest_at(i))
        return bytes(out)

    @classmethod
    def from_bytes(cls, raw: bytes | memoryview) -> ExtentMap:
        if len(raw) % _RECORD.size:
            raise ValueError("extent table length is not a multiple of its record size")
        m = cls()
        for offset, length, chunk_offset, digest in _RECORD.iter_unpack(raw):
            m.append(offset, length, digest, chunk_offset)
        return m


def overlay(newer: ExtentMap, older: ExtentMap) -> ExtentMap:
    """The map where ``newer``'s pieces win and ``older`` fills what they leave uncovered."""
    out = ExtentMap()
    j, n_new = 0, len(newer)
    pos = 0  # the end of the last piece emitted
    for old in older:
        start, end = max(old.offset, pos), old.end
        while start < end:
            while j < n_new and newer._offsets[j] <= start:  # newer pieces that begin here or before
                piece = newer[j]
                out.append(*piece)
                start = pos = max(start, piece.end)
                j += 1
            if start >= end:
                break
            cut = min(end, newer._offsets[j]) if j < n_new else end
            out.append(start, cut - start, old.digest, old.chunk_offset + (start - old.offset))
            start = pos = cut
    for k in range(j, n_new):
        out.append(*newer[k])
    return out


def resolve_chain(maps: Sequence[ExtentMap]) -> ExtentMap:
    """The same map as folding ``maps`` (newest first) with :func:`overlay`, in one sweep.

    Folding costs a pass over the whole resolved map per backup — quadratic in a chain's length (30
    incrementals of a 1 GiB image: 0.2 s). The sweep visits each piece of each map once, in offset order,
    and keeps the pieces covering the current position in a heap ordered by age, so the newest one wins.
    A piece is emitted whole where it wins throughout, cut where a newer one takes over: the pieces, and
    therefore the map digest, are exactly those of the fold.
    """
    if len(maps) == 1:
        return maps[0]
    starts = sorted((m._offsets[i], age, i) for age, m in enumerate(maps) for i in range(len(m)))
    out = ExtentMap()
    active: list[tuple[int, int, int, int]] = []  # (age, end, offset, index): the newest on top
    pending: tuple[int, int, int, int] | None = None  # (age, index, start, end) of a run not yet emitted

    def emit(run: tuple[int, int, int, int]) -> None:
        age, i, start, end = run
        m = maps[age]
        out.append(start, end - start, m.digest_at(i), m._chunk_offsets[i] + start - m._offsets[i])

    k, n, pos = 0, len(starts), 0
    while k < n or active:
        if not active:
            pos = max(pos, starts[k][0])  # a gap no map covers: skip to the next piece
        while k < n and starts[k][0] <= pos:
            offset, age, i = starts[k]
            end = offset + maps[age]._lengths[i]
            if end > pos:
                heapq.heappush(active, (age, end, offset, i))
            k += 1
        while active and active[0][1] <= pos:
            heapq.heappop(active)
        if not active:
            continue
        age, end, _, i = active[0]
        stop = min(end, starts[k][0]) if k < n else end  # a piece starting before then may be newer
        if pending is not None and pending[0] == age and pending[1] == i and pending[3] == pos:
            pending = (age, i, pending[2], stop)
        else:
            if pending is not None:
                emit(pending)
            pending = (age, i, pos, stop)
        pos = stop
    if pending is not None:
        emit(pending)
    return out
