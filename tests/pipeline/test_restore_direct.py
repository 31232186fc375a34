"""A restore writes runs of a megabyte or more past the page cache (O_DIRECT) where the file system
allows, everything else buffered: the image is exact either way, pages cached before stay coherent, and
where direct I/O is refused the restore is simply buffered."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from cbtbackup.engine import TrackedVolume
from cbtbackup.pipeline.backup import BackupOptions, run_backup
from cbtbackup.pipeline.restore import RestoreOptions, run_restore
from cbtbackup.pipeline.target_io import DirectWriter
from cbtbackup.repo.config import RepositoryConfig
from cbtbackup.repo.local_store import LocalStore
from cbtbackup.repo.repository import Repository
from tests.pipeline.direct_io import supports_direct_io

KiB, MiB = 1 << 10, 1 << 20


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    location = tmp_path / "repo"
    return Repository.init(LocalStore(location), str(location), RepositoryConfig(chunk_size=MiB))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """6 MiB and 1000 bytes: whole chunks, then a tail no direct write can take."""
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(3 * MiB) + os.urandom(3 * MiB // 2).hex().encode() + os.urandom(1000))
    TrackedVolume.track(path, block_size=64 * KiB).close()
    return path


def test_whole_chunks_go_direct_and_the_rest_buffered(
    repo: Repository, image: Path, tmp_path: Path, direct_writes: list[tuple[int, int]]
) -> None:
    if not supports_direct_io(tmp_path):
        pytest.skip(f"the file system of {tmp_path} refuses O_DIRECT")
    full = run_backup(repo, BackupOptions(str(image), "full")).manifest
    with TrackedVolume.open(image) as vol:  # cuts chunk 2 into two pieces shorter than a megabyte
        vol.write(2 * MiB + 128 * KiB, os.urandom(64 * KiB))
    incr = run_backup(repo, BackupOptions(str(image), "incr")).manifest
    out = tmp_path / "out.img"
    run_restore(repo, RestoreOptions(incr.ref.id, str(out)))
    assert out.read_bytes() == image.read_bytes()
    # Chunk 2's window too, put together from the full's chunk and the newer 64 KiB (restore_windows.py);
    # the 1000-byte tail is buffered.
    assert sorted(direct_writes) == [(i * MiB, MiB) for i in range(6)]
    assert full.device_size == 6 * MiB + 1000


def test_pages_cached_before_a_forced_restore_show_the_restored_bytes(
    repo: Repository, image: Path, tmp_path: Path, direct_writes: list[tuple[int, int]]
) -> None:
    backup = run_backup(repo, BackupOptions(str(image), "full")).manifest
    out = tmp_path / "out.img"
    out.write_bytes(os.urandom(image.stat().st_size))
    assert out.read_bytes() != image.read_bytes()  # and now its pages are cached
    run_restore(repo, RestoreOptions(backup.ref.id, str(out), force=True))
    assert out.read_bytes() == image.read_bytes()  # read through the page cache
    assert direct_writes or not supports_direct_io(tmp_path)


def test_a_target_that_cannot_be_opened_for_direct_io_gets_no_direct_write() -> None:
    left, right = socket.socketpair()  # a real descriptor that /proc cannot open again
    try:
        writer = DirectWriter(left.fileno())
        assert not writer.available
        writer.buffer(MiB)[:] = bytes(MiB)  # a buffer to put windows together in, all the same
        assert writer.write_buffer(0, MiB, 0) is False
        writer.close()
    finally:
        left.close()
        right.close()


def test_where_direct_writes_are_refused_the_restore_is_buffered(
    repo: Repository, image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No file system here refuses O_DIRECT (tmpfs takes it since Linux 6.6): the refusal is simulated.
    refused: list[int] = []

    def refuse(self: DirectWriter, start: int, length: int, offset: int) -> bool:
        refused.append(offset)
        return False

    monkeypatch.setattr(DirectWriter, "write_buffer", refuse)
    backup = run_backup(repo, BackupOptions(str(image), "full")).manifest
    out = tmp_path / "out.img"
    run_restore(repo, RestoreOptions(backup.ref.id, str(out)))
    assert out.read_bytes() == image.read_bytes()
    assert sorted(refused) == [i * MiB for i in range(6)]  # every whole chunk was offered, then buffered


def test_a_forced_restore_onto_a_block_device_goes_direct(
    repo: Repository, image: Path, tmp_path: Path, direct_writes: list[tuple[int, int]]
) -> None:
    backing = tmp_path / "device.img"
    backing.write_bytes(os.urandom(7 * MiB))
    dev = subprocess.run(["losetup", "--find", "--show", str(backing)], check=True, capture_output=True,
                         text=True).stdout.strip()
    try:
        with open(dev, "rb") as f:
            f.read()  # the device's old bytes are in the page cache now
        backup = run_backup(repo, BackupOptions(str(image), "full")).manifest
        run_restore(repo, RestoreOptions(backup.ref.id, dev, force=True))
        size = image.stat().st_size
        with open(dev, "rb") as f:
            assert f.read(size) == image.read_bytes()
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)
    assert sorted(direct_writes) == [(i * MiB, MiB) for i in range(6)]
