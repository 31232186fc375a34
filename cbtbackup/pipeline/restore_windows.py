"""Which chunks a restore writes whole, before anything else, though later backups replaced parts of them.

After a month of incrementals, nearly every chunk of a chain's full is cut by later changes into pieces of
a few hundred KiB (1 % of the image a day in scattered 64 KiB writes leaves 0.8 % of a full's 1 MiB chunks
whole after 30 days). Pieces that small are written through the page cache, one by one, and a chain
restored that way took 1.2-1.3x the time of the same image as one full, nearly all of the difference in
the kernel copying into new page-cache pages. Written whole instead — the chunk's bytes at the aligned
window it came from, one direct write, stale parts and all — and then overwritten where later backups
changed it, the window costs what a full's chunk costs plus its newer pieces.

That is correct only if every stale byte is overwritten afterwards, so:
- a chunk is written whole only if all its pieces sit where the chunk itself sits (one aligned window,
  each piece at its own offset in the chunk), so the whole chunk lands on that window and nowhere else;
- at most one chunk per window is written whole (the one with the most bytes still in use), so two whole
  writes never race over one range;
- every other piece is written after all whole windows are, and so are the zero ranges inside whole
  windows, which a new (sparse) target otherwise leaves unwritten.
A chunk whose pieces cover less than half its window is not worth a whole write: its pieces go as usual.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterator

from cbtbackup.model.extent_map import ExtentMap


def whole_windows(resolved: ExtentMap, first: dict[bytes, int], link: array[int],
                  chunk_size: int) -> dict[bytes, int]:
    """The chunks to write whole, each with the start of its window."""
    best: dict[int, tuple[int, bytes]] = {}  # window -> (bytes in use, digest)
    offsets, lengths, chunk_offsets = resolved.offsets, resolved.lengths, resolved.chunk_offsets
    for digest, i in first.items():
        base = offsets[i] - chunk_offsets[i]
        if base % chunk_size:
            continue
        used = 0
        j = i
        while j >= 0:
            if offsets[j] - chunk_offsets[j] != base or chunk_offsets[j] + lengths[j] > chunk_size:
                break
            used += lengths[j]
            j = link[j]
        else:
            if chunk_size // 2 <= used < chunk_size and used > best.get(base, (0, b""))[0]:
                best[base] = (used, digest)
    return {digest: window for window, (_, digest) in best.items()}


def zeros_within(resolved: ExtentMap, windows: list[int], chunk_size: int) -> Iterator[tuple[int, int]]:
    """The zero ranges ``(offset, length)`` of the map that lie inside the given windows (sorted starts)."""
    for piece in resolved:
        if not piece.is_zero:
            continue
        k = bisect.bisect_right(windows, piece.offset - chunk_size)
        while k < len(windows) and windows[k] < piece.end:
            start, end = max(piece.offset, windows[k]), min(piece.end, windows[k] + chunk_size)
            if start < end:
                yield start, end - start
            k += 1
