"""A restore puts each window of the image together from all its pieces and writes it at once.

What must hold: every byte lands from the newest backup that has it (new data, zeros inside a window, a
scan's run), a new target stays sparse where the image holds zeros, a chunk several windows use is fetched
once while the bound allows, and the image is exact on a new target, an existing one, and buffered.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cbtbackup.engine import TrackedVolume
from cbtbackup.model.extent_map import ZERO_DIGEST, ExtentMap, Piece
from cbtbackup.pipeline.backup import BackupOptions, run_backup
from cbtbackup.pipeline.chunk_source import ChunkSource
from cbtbackup.pipeline.restore import RestoreOptions, run_restore
from cbtbackup.pipeline.restore_windows import window_uses, windows
from cbtbackup.pipeline.target_io import DirectWriter
from cbtbackup.repo.config import RepositoryConfig
from cbtbackup.repo.local_store import LocalStore
from cbtbackup.repo.repository import Repository
from tests.pipeline.direct_io import supports_direct_io

KiB, MiB = 1 << 10, 1 << 20
A, B, C, P = (bytes([n]) * 32 for n in (1, 2, 3, 4))


def test_windows_cut_the_image_and_clip_the_pieces() -> None:
    m = ExtentMap()
    m.append(0, 256 * KiB, A, 0)
    m.append(256 * KiB, 64 * KiB, P, 128 * KiB)  # a pack's extent
    m.append(320 * KiB, MiB, A, 320 * KiB)  # reaches into the next window
    m.append(MiB + 320 * KiB, 3 * MiB + 704 * KiB, ZERO_DIGEST, 0)  # to the end of window 4
    m.append(5 * MiB, 1000, B, 0)  # a short last window
    got = list(windows(m, MiB))
    assert [(w.start, w.length) for w in got] == [(0, MiB), (MiB, MiB), (2 * MiB, 3 * MiB), (5 * MiB, 1000)]
    assert got[0].pieces == [Piece(0, 256 * KiB, A, 0), Piece(256 * KiB, 64 * KiB, P, 128 * KiB),
                             Piece(320 * KiB, MiB - 320 * KiB, A, 320 * KiB)]
    assert got[1].pieces == [Piece(MiB, 320 * KiB, A, MiB), Piece(MiB + 320 * KiB, MiB - 320 * KiB, ZERO_DIGEST, 0)]
    assert got[2].all_zero and not got[1].all_zero  # three windows of zeros come as one
    assert sum(w.length for w in got) == m.end


class CountingRepo:
    def __init__(self) -> None:
        self.fetched: list[bytes] = []

    def get_chunk(self, digest: bytes) -> bytes:
        self.fetched.append(digest)
        return digest * (MiB // 32)


def test_a_chunk_of_several_windows_is_kept_until_its_last_and_let_go_then() -> None:
    m = ExtentMap()
    for n in range(4):  # a pack P with an extent in each of four windows, the rest of each from its own chunk
        m.append(n * MiB, 64 * KiB, P, n * 64 * KiB)
        m.append(n * MiB + 64 * KiB, MiB - 64 * KiB, bytes([n + 10]) * 32, 64 * KiB)
    repo = CountingRepo()
    chunks = ChunkSource(repo.get_chunk, uses=window_uses(m, MiB))
    for w in windows(m, MiB):
        used = {p.digest for p in w.pieces}
        for digest in used:
            assert chunks.get(digest)[:32] == digest
        for digest in used:
            chunks.release(digest)
        assert (P in chunks) == (w.start < 3 * MiB)  # held until its last window, let go after it
    assert repo.fetched.count(P) == 1 and len(repo.fetched) == 5 and chunks.fetched == 5
    assert chunks.held_bytes == 0


def test_past_the_bound_a_kept_chunk_is_fetched_again() -> None:
    m = ExtentMap()
    for n in range(6):  # windows 0-2 use P and Q alternately with chunks of their own; a bound of one chunk
        shared = P if n % 2 else A
        m.append(n * MiB, 64 * KiB, shared, 0)
        m.append(n * MiB + 64 * KiB, MiB - 64 * KiB, bytes([n + 10]) * 32, 64 * KiB)
    repo = CountingRepo()
    chunks = ChunkSource(repo.get_chunk, uses=window_uses(m, MiB), keep_bytes=MiB)
    for w in windows(m, MiB):
        used = {p.digest for p in w.pieces}
        for digest in used:
            assert chunks.get(digest)[:32] == digest
        for digest in used:
            chunks.release(digest)
    assert repo.fetched.count(A) == 3 and repo.fetched.count(P) == 3  # memory stays bounded: fetched again


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    location = tmp_path / "repo"
    return Repository.init(LocalStore(location), str(location), RepositoryConfig(chunk_size=MiB))


@pytest.fixture
def chain(repo: Repository, tmp_path: Path) -> tuple[Path, str]:
    """A full of 8 MiB and 1000 bytes, then incrementals that cut its chunks: new data, zeros inside a
    chunk, a whole chunk of zeros, a scan that stores a run of more than half a window alone."""
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(4 * MiB) + os.urandom(2 * MiB).hex().encode() + os.urandom(1000))
    TrackedVolume.track(image, block_size=64 * KiB).close()
    run_backup(repo, BackupOptions(str(image), "full"))
    with TrackedVolume.open(image) as vol:
        for offset in (128 * KiB, 1 * MiB + 64 * KiB, 1 * MiB + 512 * KiB, 6 * MiB + 960 * KiB):
            vol.write(offset, os.urandom(64 * KiB))
        vol.write(3 * MiB + 256 * KiB, bytes(128 * KiB))  # zeros inside chunk 3
        vol.write(5 * MiB, bytes(MiB))  # all of chunk 5
    run_backup(repo, BackupOptions(str(image), "incr"))
    with TrackedVolume.open(image) as vol:
        vol.write(4 * MiB + 256 * KiB, bytes(64 * KiB))
        vol.write(7 * MiB + 512 * KiB, os.urandom(64 * KiB))
    run_backup(repo, BackupOptions(str(image), "incr"))
    with open(image, "r+b") as f:  # around the tracker: the next incremental scans
        f.seek(2 * MiB)
        f.write(os.urandom(576 * KiB))
        f.seek(6 * MiB + 64 * KiB)
        f.write(bytes(64 * KiB))
    last = run_backup(repo, BackupOptions(str(image), "incr")).manifest
    assert last.method == "scan"
    return image, last.ref.id


def test_a_cut_chain_restores_exactly_a_window_at_a_time(
    repo: Repository, chain: tuple[Path, str], tmp_path: Path, direct_writes: list[tuple[int, int]]
) -> None:
    if not supports_direct_io(tmp_path):
        pytest.skip(f"the file system of {tmp_path} refuses O_DIRECT")
    image, latest = chain
    out = tmp_path / "out.img"
    run_restore(repo, RestoreOptions(latest, str(out)))
    assert out.read_bytes() == image.read_bytes()
    # Every window with data went in one direct write, zeros inside it too (windows 3, 4 and 6); window 5
    # is all zeros and stays a hole; the 1000-byte tail is buffered.
    assert sorted(direct_writes) == [(i * MiB, MiB) for i in (0, 1, 2, 3, 4, 6, 7)]
    assert out.stat().st_blocks * 512 <= image.stat().st_size - MiB + 4096


def test_a_forced_restore_over_other_bytes_is_exact_too(
    repo: Repository, chain: tuple[Path, str], tmp_path: Path, direct_writes: list[tuple[int, int]]
) -> None:
    image, latest = chain
    out = tmp_path / "out.img"
    out.write_bytes(os.urandom(image.stat().st_size + 5000))
    run_restore(repo, RestoreOptions(latest, str(out), force=True))
    assert out.read_bytes() == image.read_bytes()
    assert direct_writes or not supports_direct_io(tmp_path)
    # Window 5 is all zeros: its stale bytes became a hole, not a megabyte of written zeros.
    assert out.stat().st_blocks * 512 <= image.stat().st_size - MiB + 4096


def test_a_forced_restore_onto_a_loop_device_zeroes_what_the_image_holds_as_zeros(
    repo: Repository, chain: tuple[Path, str], tmp_path: Path
) -> None:
    """A block device gets the kernel's guaranteed zeroing (or written zeros): never stale bytes."""
    import subprocess

    image, latest = chain
    backing = tmp_path / "backing.img"
    backing.write_bytes(os.urandom(-(-image.stat().st_size // 4096) * 4096))  # whole sectors
    try:
        loop = subprocess.run(["losetup", "--find", "--show", str(backing)], check=True, capture_output=True,
                              text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no loop devices on this machine")
    try:
        run_restore(repo, RestoreOptions(latest, loop, force=True))
        with open(loop, "rb") as dev:
            assert dev.read(image.stat().st_size) == image.read_bytes()
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


def test_where_direct_writes_are_refused_the_windows_are_written_buffered(
    repo: Repository, chain: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image, latest = chain
    refused: list[int] = []

    def refuse(self: DirectWriter, start: int, length: int, offset: int) -> bool:
        refused.append(offset)
        return False

    monkeypatch.setattr(DirectWriter, "write_buffer", refuse)
    out = tmp_path / "out.img"
    run_restore(repo, RestoreOptions(latest, str(out)))
    assert out.read_bytes() == image.read_bytes()
