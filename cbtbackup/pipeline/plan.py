"""Which extents a backup reads.

A full cuts the image into extents of the chunk size, aligned. A CBT incremental reads only the changed
runs, at tracking-block granularity, cut at chunk-size boundaries (so an extent never exceeds a chunk, and a
run that covers a whole aligned chunk yields the same chunk a full would, which deduplicates).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from cbtbackup.model.extent_map import ExtentMap

Extent = tuple[int, int]  # (offset, length)
Run = tuple[int, int]  # (first_block, block_count)


def aligned_extents(size: int, chunk_size: int) -> Iterator[Extent]:
    for offset in range(0, size, chunk_size):
        yield offset, min(chunk_size, size - offset)


def split_at_chunks(start: int, end: int, chunk_size: int) -> Iterator[Extent]:
    """[start, end) cut at multiples of ``chunk_size``."""
    while start < end:
        cut = min(end, (start // chunk_size + 1) * chunk_size)
        yield start, cut - start
        start = cut


def cbt_extents(runs: Iterable[tuple[int, int]], block_size: int, size: int, chunk_size: int) -> Iterator[Extent]:
    """Byte extents for changed block runs ``(first_block, count)``, clipped to the device size."""
    for first, count in runs:
        start = first * block_size
        end = min(size, (first + count) * block_size)
        yield from split_at_chunks(start, end, chunk_size)


def read_spans(extents: Iterable[Extent], span: int) -> Iterator[list[Extent]]:
    """Consecutive extents grouped into reads of at most ``span`` bytes (one extent alone may be longer).

    A snapshot image costs per request as much as per byte — each read goes through the snapshot's chunk
    lookups, and a kernel module's image device splits a buffered read into read-ahead-sized requests — so
    a full reads a few chunks at once rather than one at a time."""
    group: list[Extent] = []
    end = total = 0
    for offset, length in extents:
        if group and (offset != end or total + length > span):
            yield group
            group, total = [], 0
        group.append((offset, length))
        end, total = offset + length, total + length
    if group:
        yield group


def lost_runs(resolved: ExtentMap, lost: set[bytes], block_size: int) -> list[Run]:
    """Block runs covering the pieces of ``resolved`` whose chunks are in ``lost`` (quarantined)."""
    if not lost:
        return []
    runs: list[Run] = []
    for piece in resolved:
        if piece.digest in lost:
            first = piece.offset // block_size
            runs.append((first, -(-piece.end // block_size) - first))
    return merge_runs(runs, [])


def merge_runs(a: Iterable[Run], b: Iterable[Run]) -> list[Run]:
    """The union of two sets of block runs, sorted and with touching runs joined."""
    out: list[Run] = []
    for first, count in sorted([*a, *b]):
        if out and first <= out[-1][0] + out[-1][1]:
            last_first, last_count = out[-1]
            out[-1] = (last_first, max(last_count, first + count - last_first))
        else:
            out.append((first, count))
    return out
