"""Sizes of tracking blocks and copy-on-write chunks, by the blksnap rules.

Both are powers of two chosen from the device capacity so that the per-device maps stay small:
a tracking block starts at 64 KiB and doubles while the device would need more than 2^21 of them (at most
64 MiB); a COW chunk starts at 256 KiB and grows only past 2^40 chunks.
"""

from __future__ import annotations

import mmap

from cbtbackup.errors import UsageError

TRACKING_BLOCK_SHIFT_MIN = 16
TRACKING_BLOCK_SHIFT_MAX = 26
TRACKING_BLOCK_COUNT_MAX = 1 << 21
COW_CHUNK_SHIFT_MIN = 18
COW_CHUNK_COUNT_MAX = 1 << 40
SECTOR_SIZE = 512


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def tracking_block_size(capacity: int) -> int:
    """The default tracking block size for a device of ``capacity`` bytes."""
    shift = TRACKING_BLOCK_SHIFT_MIN
    while ceil_div(capacity, 1 << shift) > TRACKING_BLOCK_COUNT_MAX and shift < TRACKING_BLOCK_SHIFT_MAX:
        shift += 1
    return 1 << shift


def cow_chunk_size(capacity: int) -> int:
    """The COW chunk size: 256 KiB, at least a page, larger only for enormous devices."""
    shift = max(COW_CHUNK_SHIFT_MIN, mmap.PAGESIZE.bit_length() - 1)
    while ceil_div(capacity, 1 << shift) > COW_CHUNK_COUNT_MAX:
        shift += 1
    return 1 << shift


def check_block_size(block_size: int) -> int:
    """Validate an explicit tracking block size: a power of two from one sector to 64 MiB."""
    if block_size < SECTOR_SIZE or block_size & (block_size - 1) or block_size > 1 << TRACKING_BLOCK_SHIFT_MAX:
        raise UsageError(f"tracking block size {block_size} is not a power of two from 512 bytes to 64 MiB")
    return block_size


def index_range(offset: int, length: int, unit: int) -> range:
    """Indexes of the ``unit``-sized pieces that the byte range [offset, offset+length) touches."""
    if length <= 0:
        return range(0)
    return range(offset // unit, (offset + length - 1) // unit + 1)
