"""Misuse of the engine gives clear exceptions, all from the one tree rooted in CbtError."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cbtbackup.engine import Snapshot, TrackedVolume
from cbtbackup.engine.errors import (
    AlreadyTrackedError,
    NotTrackedError,
    OutOfRangeError,
    SnapshotBusyError,
    VolumeLockedError,
)
from cbtbackup.errors import CbtError, NotFoundError, UsageError
from tests.conftest import MakeImage


def test_opening_an_untracked_file(make_image: MakeImage) -> None:
    img = make_image(1 << 20)
    with pytest.raises(NotTrackedError, match="not tracked") as info:
        TrackedVolume.open(img)
    assert isinstance(info.value, CbtError) and info.value.exit_code == 3


def test_missing_file_directory_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"(?i)no such file"):
        TrackedVolume.track(tmp_path / "nope.img")
    with pytest.raises(UsageError, match="directory"):
        TrackedVolume.track(tmp_path)
    empty = tmp_path / "empty.img"
    empty.touch()
    with pytest.raises(UsageError, match="empty"):
        TrackedVolume.track(empty)


def test_tracking_twice(make_image: MakeImage) -> None:
    img = make_image(1 << 20)
    TrackedVolume.track(img).close()
    with pytest.raises(AlreadyTrackedError, match="tracked already"):
        TrackedVolume.track(img)


def test_second_tracker_in_this_process_is_refused(make_image: MakeImage) -> None:
    img = make_image(1 << 20)
    with TrackedVolume.track(img):
        with pytest.raises(VolumeLockedError, match="in use by another tracker") as info:
            TrackedVolume.open(img)
        assert info.value.exit_code == 4
    TrackedVolume.open(img).close()  # free again once closed


def test_second_tracker_in_another_process_is_refused(make_image: MakeImage) -> None:
    img = make_image(1 << 20)
    code = "import sys; from cbtbackup.engine import TrackedVolume; TrackedVolume.open(sys.argv[1])"
    with TrackedVolume.track(img):
        result = subprocess.run([sys.executable, "-c", code, str(img)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "VolumeLockedError" in result.stderr


def test_reads_and_writes_past_the_end(make_image: MakeImage) -> None:
    img = make_image(1 << 20)
    with TrackedVolume.track(img) as vol:
        with pytest.raises(OutOfRangeError, match="past the end"):
            vol.read((1 << 20) - 1, 2)
        with pytest.raises(OutOfRangeError):
            vol.write(1 << 20, b"x")
        with pytest.raises(OutOfRangeError):
            vol.read(-1, 1)
        with Snapshot.create([vol]) as snap:
            snap.take()
            with pytest.raises(OutOfRangeError, match="outside the image"):
                snap.image(vol).read(1 << 20, 1)


def test_snapshot_over_a_volume_in_another_snapshot(make_image: MakeImage) -> None:
    img = make_image(1 << 20)
    with TrackedVolume.track(img) as vol, Snapshot.create([vol]):
        with pytest.raises(SnapshotBusyError) as info:
            Snapshot.create([vol])
        assert isinstance(info.value, CbtError)


def test_closed_volume(make_image: MakeImage) -> None:
    img = make_image(1 << 20)
    vol = TrackedVolume.track(img)
    vol.close()
    with pytest.raises(UsageError, match="closed"):
        vol.write(0, b"x")
    with pytest.raises(UsageError, match="closed"):
        Snapshot.create([vol])


def test_bad_diff_storage(make_image: MakeImage, tmp_path: Path) -> None:
    img = make_image(1 << 20)
    with TrackedVolume.track(img) as vol:
        with pytest.raises(UsageError, match="no such directory"):
            Snapshot.create([vol], tmp_path / "missing" / "file")
        with pytest.raises(UsageError, match="limit must be positive"):
            Snapshot.create([vol], tmp_path, limit=0)
        Snapshot.create([vol]).destroy()  # the failures left the volume free
