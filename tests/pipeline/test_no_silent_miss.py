"""Writes that go around the tracker — raw dd onto the image or a tracked loop device, before, during and
after a backup, with timestamps put back — never make an incremental that omits them.

Each story keeps the image as it was at every take and restores every backup against it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cbtbackup.engine import TrackedVolume
from cbtbackup.engine.providers import UserspaceProvider
from cbtbackup.errors import SnapshotFailedError
from cbtbackup.pipeline.backup import BackupOptions, BackupResult, backup_session, run_backup
from cbtbackup.pipeline.restore import RestoreOptions, run_restore
from cbtbackup.repo.config import RepositoryConfig
from cbtbackup.repo.local_store import LocalStore
from cbtbackup.repo.repository import Repository

MiB = 1 << 20
BS = 64 << 10


class Story:
    """A repository, one source, and the source's bytes at each backup's take."""

    def __init__(self, root: Path, source: Path, name: str = "disk", state_dir: Path | None = None) -> None:
        self.root, self.source, self.name, self.state_dir = root, source, name, state_dir
        self.repo = Repository.init(LocalStore(root / "repo"), str(root / "repo"), RepositoryConfig())
        self.taken: dict[str, bytes] = {}

    def backup(self, kind: str = "incr") -> BackupResult:
        at_take = read_all(self.source)
        result = run_backup(self.repo, BackupOptions(str(self.source), kind, self.name,  # type: ignore[arg-type]
                                                     state_dir=str(self.state_dir) if self.state_dir else None))
        self.taken[result.manifest.ref.id] = at_take
        return result

    def check_restores(self) -> None:
        for i, (backup_id, expected) in enumerate(self.taken.items()):
            target = self.root / f"restored-{i}.img"
            run_restore(self.repo, RestoreOptions(backup_id, str(target)))
            assert target.read_bytes() == expected, f"backup {backup_id} does not restore its take"
            target.unlink()


def read_all(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def dd(path: Path, offset: int, data: bytes) -> None:
    """A raw write by another program, as a user would make it."""
    subprocess.run(["dd", f"of={path}", "bs=1", f"seek={offset}", "conv=notrunc,fsync", "status=none"],
                   input=data, check=True)


def touch_back(path: Path, reference: Path) -> None:
    subprocess.run(["touch", "-r", str(reference), str(path)], check=True)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(8 * MiB))
    TrackedVolume.track(path).close()
    return path


def test_dd_after_a_backup_makes_the_next_incremental_see_it(tmp_path: Path, image: Path) -> None:
    story = Story(tmp_path, image)
    story.backup("full")
    dd(image, 3 * MiB + 5, b"around the tracker")
    result = story.backup()
    assert result.manifest.method == "scan"
    assert any("written while it was not tracked" in n for n in result.notes), result.notes
    assert result.manifest.stats.bytes_changed <= 2 * BS
    story.check_restores()


def test_dd_with_mtime_put_back_is_seen(tmp_path: Path, image: Path) -> None:
    story = Story(tmp_path, image)
    story.backup("full")
    reference = tmp_path / "mtime"
    reference.touch()
    touch_back(reference, image)  # remember the image's mtime, write, then put it back
    dd(image, 7 * MiB, b"sneaky")
    touch_back(image, reference)
    assert story.backup().manifest.method == "scan"
    story.check_restores()


def test_dd_before_the_first_incremental_after_tracking(tmp_path: Path, image: Path) -> None:
    dd(image, 0, b"before any backup")
    story = Story(tmp_path, image)
    story.backup("full")
    story.backup()  # by CBT: nothing happened since the full
    story.check_restores()


def test_dd_during_a_backup_fails_that_backup_and_the_next_one_scans(tmp_path: Path, image: Path) -> None:
    story = Story(tmp_path, image)
    story.backup("full")
    with TrackedVolume.open(image) as vol:
        vol.write(MiB, b"through the engine")
    session = UserspaceProvider(image).open_snapshot()
    try:
        dd(image, 2 * MiB, b"while the backup reads")  # the lease holds dd until the engine took note
        with pytest.raises(SnapshotFailedError, match=r"opened .* for writing"):
            backup_session(story.repo, session, "incr", "disk")
    finally:
        session.close()
    assert len(story.repo.list_backups("disk")) == 1  # nothing was committed
    result = story.backup()
    assert result.manifest.method == "scan"
    assert any("another process opened the image for writing" in n for n in result.notes), result.notes
    story.check_restores()


def test_a_reader_during_a_backup_costs_a_scan_but_not_the_backup(tmp_path: Path, image: Path) -> None:
    story = Story(tmp_path, image)
    story.backup("full")
    session = UserspaceProvider(image).open_snapshot()
    try:
        subprocess.run(["cmp", "-s", str(image), str(image)], check=True)  # opens it read-only
        result = backup_session(story.repo, session, "incr", "disk")
        story.taken[result.manifest.ref.id] = story.taken[next(iter(story.taken))]
    finally:
        session.close()
    assert story.backup().manifest.method == "scan"
    story.check_restores()


def test_engine_writes_alone_stay_cbt(tmp_path: Path, image: Path) -> None:
    """The checks do not turn every incremental into a scan: writes through the engine are trusted."""
    story = Story(tmp_path, image)
    story.backup("full")
    for round_no in range(3):
        with TrackedVolume.open(image) as vol:
            vol.write(round_no * MiB + 7, os.urandom(3000))
        result = story.backup()
        assert result.manifest.method == "cbt", result.notes
    story.check_restores()


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    backing = tmp_path / "backing.img"
    backing.write_bytes(os.urandom(8 * MiB))
    dev = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True)
    if dev.returncode != 0:
        pytest.skip(f"no loop devices on this machine: {dev.stderr.strip()}")
    yield dev.stdout.strip()
    subprocess.run(["losetup", "-d", dev.stdout.strip()], check=True)


def test_dd_onto_a_tracked_loop_device_is_never_missed(tmp_path: Path, loop_device: str) -> None:
    state = tmp_path / "state"
    TrackedVolume.track(loop_device, state_dir=state).close()
    story = Story(tmp_path, Path(loop_device), state_dir=state)
    story.backup("full")
    dd(Path(loop_device), 4 * MiB + 100, b"raw write onto the device")
    result = story.backup()
    assert result.manifest.method == "scan"
    assert any("block device" in n for n in result.notes), result.notes
    with TrackedVolume.open(loop_device, state_dir=state) as vol:
        vol.write(0, b"through the engine")
    assert story.backup().manifest.method == "scan"  # an unattached device is never trusted
    story.check_restores()


# -- a random mix of everything ----------------------------------------------------------------------------

steps = st.lists(
    st.one_of(
        st.tuples(st.just("engine"), st.integers(0, 8 * MiB - 1), st.integers(1, 200_000)),
        st.tuples(st.just("dd"), st.integers(0, 8 * MiB - 1), st.integers(1, 100_000)),
        st.tuples(st.just("dd-touch"), st.integers(0, 8 * MiB - 1), st.integers(1, 100_000)),
        st.tuples(st.just("dd-while-open"), st.integers(0, 8 * MiB - 1), st.integers(1, 100_000)),
        st.tuples(st.just("backup"), st.just(0), st.just(0)),
    ),
    min_size=3,
    max_size=14,
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=steps)
def test_random_interleavings_of_engine_writes_bypasses_and_backups(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int, int]]
) -> None:
    root = tmp_path_factory.mktemp("mix")
    image = root / "disk.img"
    image.write_bytes(bytes(8 * MiB))
    TrackedVolume.track(image).close()
    story = Story(root, image)
    story.backup("full")
    reference = root / "mtime"
    reference.touch()
    for kind, offset, length in [*steps, ("backup", 0, 0)]:
        length = min(length, 8 * MiB - offset)
        data = os.urandom(length)
        if kind == "engine":
            with TrackedVolume.open(image) as vol:
                vol.write(offset, data)
        elif kind == "dd":
            dd(image, offset, data)
        elif kind == "dd-touch":
            touch_back(reference, image)
            dd(image, offset, data)
            touch_back(image, reference)
        elif kind == "dd-while-open":  # the engine holds the image (as a daemon would) and writes too
            with TrackedVolume.open(image) as vol:
                vol.write((offset + MiB) % (8 * MiB - 10), b"engine")
                with open(image, "r+b") as f:
                    f.seek(offset)
                    f.write(data)
                vol.write(offset // 2, b"engine again")
        else:
            story.backup()
    story.check_restores()
