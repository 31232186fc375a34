from __future__ import annotations

import pytest

from cbtbackup.engine.geometry import check_block_size, cow_chunk_size, index_range, tracking_block_size
from cbtbackup.errors import UsageError

GiB = 1 << 30
TiB = 1 << 40


@pytest.mark.parametrize(
    ("capacity", "expected"),
    [
        (1, 64 << 10),
        (128 * GiB, 64 << 10),
        (128 * GiB + 1, 128 << 10),
        (1 * TiB, 512 << 10),
        (4 * TiB, 2 << 20),
        (1 << 60, 64 << 20),  # capped at 64 MiB however large the device
    ],
)
def test_tracking_block_size_follows_blksnap(capacity: int, expected: int) -> None:
    assert tracking_block_size(capacity) == expected


def test_cow_chunk_is_256k_until_2_to_the_40_chunks() -> None:
    assert cow_chunk_size(10 * GiB) == 256 << 10
    assert cow_chunk_size((256 << 10) * (1 << 40)) == 256 << 10
    assert cow_chunk_size((256 << 10) * (1 << 40) + 1) == 512 << 10


@pytest.mark.parametrize("bad", [0, 100, 511, 3 << 10, 128 << 20])
def test_bad_block_sizes_are_refused(bad: int) -> None:
    with pytest.raises(UsageError):
        check_block_size(bad)


def test_index_range() -> None:
    assert list(index_range(0, 1, 4)) == [0]
    assert list(index_range(3, 2, 4)) == [0, 1]
    assert list(index_range(4, 4, 4)) == [1]
    assert list(index_range(4, 0, 4)) == []
