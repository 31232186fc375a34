"""Chunks cut by later backups are written whole first, then overwritten: the image stays exact.

The risk is stale bytes: a whole write puts a chunk's old bytes where later backups changed them, so every
such range must be written again afterwards — with newer data, or with zeros where the image holds zeros.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cbtbackup.engine import TrackedVolume
from cbtbackup.model.extent_map import ZERO_DIGEST, ExtentMap
from cbtbackup.pipeline.backup import BackupOptions, run_backup
from cbtbackup.pipeline.restore import RestoreOptions, _group_by_chunk, run_restore
from cbtbackup.pipeline.restore_windows import whole_windows, zeros_within
from cbtbackup.pipeline.target_io import DirectWriter
from cbtbackup.repo.config import RepositoryConfig
from cbtbackup.repo.local_store import LocalStore
from cbtbackup.repo.repository import Repository
from tests.pipeline.test_restore_direct import supports_direct_io

KiB, MiB = 1 << 10, 1 << 20
A, B, C, P = (bytes([n]) * 32 for n in (1, 2, 3, 4))


def windows_of(m: ExtentMap, chunk_size: int = MiB) -> dict[bytes, int]:
    first, link = _group_by_chunk(m)
    return whole_windows(m, first, link, chunk_size)


def test_a_cut_chunk_in_its_own_window_is_written_whole() -> None:
    m = ExtentMap()
    m.append(0, 256 * KiB, A, 0)  # chunk A at window 0, cut by a newer pack
    m.append(256 * KiB, 64 * KiB, P, 0)
    m.append(320 * KiB, MiB - 320 * KiB, A, 320 * KiB)
    m.append(MiB, MiB, B, 0)  # chunk B whole: written as a piece, as ever
    assert windows_of(m) == {A: 0}


def test_chunks_that_would_land_elsewhere_or_help_little_are_not() -> None:
    m = ExtentMap()
    m.append(0, 64 * KiB, P, 0)  # a pack: its extents lie apart in the image
    m.append(64 * KiB, MiB - 64 * KiB, C, 64 * KiB)  # C in use in its window: mostly
    m.append(MiB, 64 * KiB, P, 128 * KiB)
    m.append(MiB + 64 * KiB, 256 * KiB, B, 64 * KiB)  # B: less than half of its window in use
    m.append(MiB + 320 * KiB, MiB - 320 * KiB, ZERO_DIGEST, 0)
    assert windows_of(m) == {C: 0}


def test_one_whole_chunk_per_window_the_one_most_in_use() -> None:
    m = ExtentMap()
    m.append(0, 512 * KiB + 64 * KiB, B, 0)  # a scan's run stored alone, at the window's start
    m.append(576 * KiB, MiB - 576 * KiB, A, 576 * KiB)  # the full's chunk of that window
    assert windows_of(m) == {B: 0}


def test_zeros_inside_whole_windows_are_found() -> None:
    m = ExtentMap()
    m.append(0, 3 * MiB + 64 * KiB, ZERO_DIGEST, 0)
    m.append(3 * MiB + 64 * KiB, 64 * KiB, A, 0)
    m.append(3 * MiB + 128 * KiB, 5 * MiB, ZERO_DIGEST, 0)
    assert list(zeros_within(m, [MiB, 3 * MiB, 5 * MiB], MiB)) == [
        (MiB, MiB), (3 * MiB, 64 * KiB), (3 * MiB + 128 * KiB, MiB - 128 * KiB), (5 * MiB, MiB)]
    assert list(zeros_within(m, [], MiB)) == []


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


@pytest.fixture
def direct_writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    taken: list[tuple[int, int]] = []
    real = DirectWriter.write

    def counted(self: DirectWriter, data: memoryview, offset: int) -> bool:
        done = real(self, data, offset)
        if done:
            taken.append((offset, len(data)))
        return done

    monkeypatch.setattr(DirectWriter, "write", counted)
    return taken


def test_a_cut_chain_restores_exactly_with_whole_windows(
    repo: Repository, chain: tuple[Path, str], tmp_path: Path, direct_writes: list[tuple[int, int]]
) -> None:
    if not supports_direct_io(tmp_path):
        pytest.skip(f"the file system of {tmp_path} refuses O_DIRECT")
    image, latest = chain
    out = tmp_path / "out.img"
    run_restore(repo, RestoreOptions(latest, str(out)))
    assert out.read_bytes() == image.read_bytes()
    # Every chunk of the full that is still mostly in use went whole; chunk 5 is all zeros now; in window
    # 2 the scan's run is most in use (576 KiB), and the full's chunk has only 448 KiB left there.
    assert sorted(direct_writes) == sorted([(i * MiB, MiB) for i in (0, 1, 3, 4, 6, 7)] + [(2 * MiB, 576 * KiB)])


def test_a_forced_restore_over_other_bytes_is_exact_too(
    repo: Repository, chain: tuple[Path, str], tmp_path: Path, direct_writes: list[tuple[int, int]]
) -> None:
    image, latest = chain
    out = tmp_path / "out.img"
    out.write_bytes(os.urandom(image.stat().st_size + 5000))
    run_restore(repo, RestoreOptions(latest, str(out), force=True))
    assert out.read_bytes() == image.read_bytes()
    assert direct_writes or not supports_direct_io(tmp_path)


def test_where_direct_writes_are_refused_nothing_is_written_whole(
    repo: Repository, chain: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image, latest = chain
    monkeypatch.setattr(DirectWriter, "write", lambda self, data, offset: False)
    out = tmp_path / "out.img"
    run_restore(repo, RestoreOptions(latest, str(out)))
    assert out.read_bytes() == image.read_bytes()
