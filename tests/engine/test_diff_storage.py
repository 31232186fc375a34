"""Difference storage: private, bounded, growing in steps, and gone with its snapshot."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cbtbackup.engine import EventCode, Snapshot, TrackedVolume
from cbtbackup.engine.errors import SnapshotCorruptedError
from tests.conftest import MakeImage

CHUNK = 256 << 10


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs of our own, so free space can be measured without other users' noise."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_directory_storage_is_invisible_private_and_released(make_image: MakeImage, tmpfs: Path) -> None:
    img = make_image(16 * CHUNK)
    with TrackedVolume.track(img) as vol:
        free_before = free_bytes(tmpfs)
        snap = Snapshot.create([vol], diff_storage=tmpfs, limit=8 << 20, step=1 << 20)
        snap.take()
        vol.write(0, os.urandom(4 * CHUNK))  # four chunks copied
        assert list(tmpfs.iterdir()) == []  # nothing to see in the directory
        st = os.fstat(snap.storage.fd)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_nlink == 0  # unnamed: nobody can open it by path
        assert free_bytes(tmpfs) <= free_before - 4 * CHUNK
        snap.destroy()
        assert free_bytes(tmpfs) == free_before


def test_storage_grows_in_fallocate_steps(make_image: MakeImage, tmpfs: Path) -> None:
    img = make_image(32 * CHUNK)
    with TrackedVolume.track(img) as vol, Snapshot.create([vol], tmpfs, limit=6 << 20, step=1 << 20) as snap:
        snap.take()
        vol.write(0, b"x")
        assert snap.storage.allocated == 1 << 20
        assert os.fstat(snap.storage.fd).st_blocks * 512 >= 1 << 20
        vol.write(CHUNK * 4, b"x" * (4 * CHUNK))
        assert snap.storage.used == 5 * CHUNK
        assert snap.storage.allocated == 2 << 20


def test_regular_file_storage_is_used_and_emptied(make_image: MakeImage, tmp_path: Path) -> None:
    img = make_image(8 * CHUNK)
    storage = tmp_path / "diff.storage"
    with TrackedVolume.track(img) as vol:
        snap = Snapshot.create([vol], storage, limit=4 << 20, step=1 << 20)
        snap.take()
        vol.write(0, b"y" * CHUNK)
        assert stat.S_IMODE(storage.stat().st_mode) == 0o600
        assert storage.stat().st_size >= CHUNK
        snap.destroy()
        assert storage.stat().st_size == 0


def test_overflow_corrupts_the_snapshot_and_keeps_every_write(make_image: MakeImage, tmp_path: Path) -> None:
    img = make_image(16 * CHUNK)
    with TrackedVolume.track(img) as vol:
        original = img.read_bytes()
        expected = bytearray(original)
        snap = Snapshot.create([vol], tmp_path, limit=3 * CHUNK, step=CHUNK)
        snap.take()
        image = snap.image(vol)
        for i in range(6):  # the fourth chunk no longer fits
            if i == 3:  # three chunks copied: the image still reads as at the take
                assert image.read(0, vol.size) == original
            data = os.urandom(CHUNK)
            vol.write(i * CHUNK, data)
            expected[i * CHUNK:(i + 1) * CHUNK] = data
        events = [snap.wait_event(0.5) for _ in range(2)]
        assert [e.code if e else None for e in events] == [EventCode.NO_SPACE, EventCode.CORRUPTED]
        assert events[0] is not None and events[0].requested_bytes == CHUNK
        assert events[1] is not None and events[1].errno == 28 and events[1].volume == str(img)
        assert snap.wait_event(0.05) is None  # one corrupted event per device, no more
        assert snap.corrupted and snap.error_code == -28
        with pytest.raises(SnapshotCorruptedError, match="raise its limit"):
            image.read(0, 4096)
        assert vol.read(0, vol.size) == bytes(expected)  # the volume lost no write
        snap.destroy()
    assert img.read_bytes() == bytes(expected)


def test_multi_volume_overflow_reports_every_device(make_image: MakeImage, tmp_path: Path) -> None:
    a, b = make_image(4 * CHUNK), make_image(4 * CHUNK)
    with (
        TrackedVolume.track(a) as va,
        TrackedVolume.track(b) as vb,
        Snapshot.create([va, vb], tmp_path, limit=CHUNK, step=CHUNK) as snap,
    ):
        snap.take()
        vb.write(0, b"1")
        va.write(CHUNK, b"2")  # no room left
        codes = [snap.wait_event(0.2) for _ in range(3)]
        corrupted = [e.volume for e in codes if e and e.code == EventCode.CORRUPTED]
        assert sorted(corrupted) == sorted([str(a), str(b)])


DIE_HOLDING_A_SNAPSHOT = """
import os, signal, sys
from cbtbackup.engine import Snapshot, TrackedVolume
vol = TrackedVolume.open(sys.argv[1])
snap = Snapshot.create([vol], sys.argv[2], step=1 << 20)
snap.take()
vol.write(0, os.urandom(4 << 20))
print(snap.storage.used, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_storage_disappears_with_the_process(make_image: MakeImage, tmpfs: Path) -> None:
    img = make_image(16 * CHUNK)
    TrackedVolume.track(img).close()
    free_before = free_bytes(tmpfs)
    child = subprocess.run(
        [sys.executable, "-c", DIE_HOLDING_A_SNAPSHOT, str(img), str(tmpfs)], capture_output=True, text=True
    )
    assert child.returncode == -signal.SIGKILL
    assert int(child.stdout) == 4 << 20  # it did hold 4 MiB of preserved chunks
    assert list(tmpfs.iterdir()) == []
    assert free_bytes(tmpfs) == free_before
