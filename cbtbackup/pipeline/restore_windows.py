"""A file restore, window by window: every aligned chunk-size stretch of the image is put together in one
page-aligned buffer from all the pieces that fall in it, and written at once — directly, past the page
cache, where the target allows.

Why windows and not chunks: after a month of incrementals nearly every chunk of a chain's full is cut by
later changes into pieces of a few hundred KiB (1 % of the image a day in scattered 64 KiB writes leaves
0.8 % of a full's 1 MiB chunks whole after 30 days). Written chunk by chunk, those pieces went through the
page cache one by one, and a chain took 1.2-1.3x the time of the same image restored from one full, the
difference nearly all the kernel copying into new page-cache pages. Put together per window, a chain's
image is written as a full's is: one direct write per megabyte, each byte once.

Chunks come from the reading core (``chunk_source.py``), told how many windows use each. One that a
single window uses is fetched for that window and let go after it. One that several windows use — a
packed incremental's chunk holds extents for a stretch of the image — is held from its first window to its
last, within a bound in bytes; packs are filled in image order, so at any point a chain has about one
live pack per incremental, and windows are written in order. Past the bound the least recently used goes
and is fetched again if a later window needs it: memory stays bounded whatever the chain.

Sparse: on a new target a window of zeros is not written at all; on an existing target (``--force``) it
becomes a hole (``target_io.zero_range``: punched in a file, zeroed by the kernel on a device, written as
zeros only where neither works). Zeros inside a window that holds data are written with it, as zeros: a
full's chunks carry their zeros as data anyway, and only an incremental's zeroed blocks come as pieces of
their own, so a restored image loses next to nothing of its holes for one write per window.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterator

from cbtbackup.model.extent_map import ZERO_DIGEST, ExtentMap, Piece


@dataclasses.dataclass(frozen=True)
class Window:
    """``[start, start + length)`` of the image and the map's pieces over it, clipped, in order."""

    start: int
    length: int
    pieces: list[Piece]

    @property
    def all_zero(self) -> bool:
        return all(p.is_zero for p in self.pieces)


def windows(resolved: ExtentMap, size: int) -> Iterator[Window]:
    """The image cut at multiples of ``size``. Zeros that cover whole windows come as one window of zeros
    however long (a sparse image of terabytes is not walked a megabyte at a time)."""
    pieces: list[Piece] = []
    start = 0
    for p in resolved:
        pos = p.offset
        while pos < p.end:
            if p.is_zero and not pieces and pos % size == 0 and p.end - pos >= size:
                whole = (p.end - pos) // size * size
                yield Window(pos, whole, [Piece(pos, whole, ZERO_DIGEST, 0)])
                pos += whole
                continue
            if not pieces:
                start = pos
            cut = min(p.end, pos // size * size + size)
            pieces.append(Piece(pos, cut - pos, p.digest, p.chunk_offset + pos - p.offset))
            pos = cut
            if cut % size == 0:
                yield Window(start, cut - start, pieces)
                pieces = []
    if pieces:
        yield Window(start, pieces[-1].end - start, pieces)


def window_uses(resolved: ExtentMap, window: int) -> collections.Counter[bytes]:
    """How many windows use each chunk, from the map's pieces alone (no windows built), in the order of
    their first window: the reading core holds a chunk used by several from its first window to its last."""
    uses: collections.Counter[bytes] = collections.Counter()
    last: dict[bytes, int] = {}  # the last window counted for a chunk: pieces come in image order
    for p in resolved:
        if p.is_zero:
            continue
        for w in range(max(p.offset // window, last.get(p.digest, -1) + 1), (p.end - 1) // window + 1):
            uses[p.digest] += 1
            last[p.digest] = w
    return uses
