from __future__ import annotations

from cbtbackup.pipeline.plan import aligned_extents, cbt_extents, split_at_chunks

C = 1 << 20


def test_aligned_extents_cover_the_image() -> None:
    assert list(aligned_extents(2 * C + 5, C)) == [(0, C), (C, C), (2 * C, 5)]
    assert list(aligned_extents(0, C)) == []


def test_split_at_chunk_boundaries() -> None:
    assert list(split_at_chunks(C - 10, C + 20, C)) == [(C - 10, 10), (C, 20)]
    assert list(split_at_chunks(0, 3 * C, C)) == [(0, C), (C, C), (2 * C, C)]


def test_cbt_runs_to_extents_clipped_to_the_device() -> None:
    bs = 64 << 10
    runs = [(0, 1), (15, 3), (40, 2)]  # blocks; block 41 is the device's short last block
    size = 41 * bs + 100
    got = list(cbt_extents(runs, bs, size, C))
    assert got == [(0, bs), (15 * bs, bs), (16 * bs, 2 * bs), (40 * bs, bs + 100)]
    assert all(o // C == (o + n - 1) // C for o, n in got)  # no extent crosses a chunk boundary
