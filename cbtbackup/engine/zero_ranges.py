"""A snapshot image whose zero ranges are known: reads inside them come from memory, the rest from the source.

QEMU's provider learns the zero ranges from NBD's ``base:allocation``, the RBD provider from librbd's
allocation and diff extents; both then read only what can hold data.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

from cbtbackup.engine.errors import OutOfRangeError

ReadData = Callable[[int, int], bytes | bytearray]


class ZeroRangesImage:
    """Reads of a ``size``-byte image; ``zeros`` are sorted, disjoint ``(offset, length)`` ranges of zeros."""

    def __init__(self, size: int, zeros: list[tuple[int, int]], read_data: ReadData) -> None:
        self.size = size
        self._zeros = zeros
        self._starts = [offset for offset, _ in zeros]
        self._read_data = read_data

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise OutOfRangeError(f"read of {length} bytes at {offset} is outside the image")
        out = bytearray()
        position, end = offset, offset + length
        i = max(0, bisect.bisect_right(self._starts, position) - 1)
        while position < end:
            zero_start, zero_length = self._zeros[i] if i < len(self._zeros) else (end, 0)
            if zero_start + zero_length <= position:
                i += 1
                continue
            if zero_start <= position:  # inside a zero range
                stop = min(end, zero_start + zero_length)
                out += bytes(stop - position)
            else:
                stop = min(end, zero_start)
                data = self._read_data(position, stop - position)
                if position == offset and stop == end:
                    return bytes(data)  # no zero range in the way: one copy, not two
                out += data
            position = stop
        return bytes(out)


def complement(extents: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """The ranges of ``[0, size)`` that no extent covers (extents sorted, possibly adjacent or overlapping)."""
    out: list[tuple[int, int]] = []
    position = 0
    for offset, length in extents:
        if offset > position:
            out.append((position, offset - position))
        position = max(position, offset + length)
    if position < size:
        out.append((position, size - position))
    return out
