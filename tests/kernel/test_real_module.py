"""Backups through Veeam's real blksnap module (standalone 7.x), inside the test VM."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from cbtbackup.engine.blksnap import abi
from cbtbackup.engine.blksnap.kernel import BlksnapModule
from cbtbackup.engine.providers import BlksnapProvider
from cbtbackup.engine.providers.scan import FileReader
from cbtbackup.errors import SnapshotFailedError
from cbtbackup.pipeline.backup import BackupOptions, run_backup
from cbtbackup.repo.location import open_repository
from tests.conftest import RunCli
from tests.kernel.conftest import MakeDevice, read_device, write_device
from tests.killing import backup_in_a_slow_child, wait_for

pytestmark = pytest.mark.kernel

MiB = 1 << 20
LIMIT = ("--diff-storage-limit", "64MiB")  # the module allocates min(limit, 1 GiB) at once: keep it small


def blksnap_args(storage: Path) -> tuple[str, ...]:
    return ("--provider", "blksnap", "--diff-storage", str(storage), *LIMIT, "--json")


def test_the_module_is_the_standalone_build(cli: RunCli, real_module: BlksnapModule) -> None:
    assert real_module.dialect is abi.STANDALONE
    status = cli("blksnap", "status", "--json").json
    assert status["version"] == [7, 0, 0, 0] and status["build"]["name"] == "standalone"


def test_full_and_cbt_incrementals_restore_exactly(
    cli: RunCli, repo: Path, make_device: MakeDevice, storage: Path, scratch: Path
) -> None:
    dev = make_device()
    full = cli("full", "-r", repo, dev, *blksnap_args(storage))
    assert full.code == 0, full.err
    assert (full.json["provider"], full.json["method"]) == ("blksnap", "full")
    points = [(full.json["id"], read_device(dev))]
    scanned: list[int] = []
    for round_no in range(2):
        for i in range(5):  # five 64 KiB writes, each spanning at most two tracking blocks
            write_device(dev, ((round_no * 5 + i) * 1531 * 1024) % (15 * MiB), os.urandom(64 << 10))
        incr = cli("incr", "-r", repo, dev, *blksnap_args(storage))
        assert incr.code == 0, incr.err
        assert incr.json["method"] == "cbt", incr.err
        assert 0 < incr.json["bytes_scanned"] <= 10 * (64 << 10)
        points.append((incr.json["id"], read_device(dev)))
        scanned.append(incr.json["bytes_scanned"])
    # A differential against the full: the module's per-block change numbers give both rounds' blocks.
    diff = cli("incr", "-r", repo, dev, "--since", "full", *blksnap_args(storage))
    assert diff.code == 0, diff.err
    assert (diff.json["method"], diff.json["parent"]) == ("cbt", full.json["id"])
    assert max(scanned) < diff.json["bytes_scanned"] <= sum(scanned)
    points.append((diff.json["id"], read_device(dev)))
    for i, (backup_id, expected) in enumerate(points):
        out = scratch / f"restored{i}.img"
        assert cli("restore", "-r", repo, backup_id, out).code == 0
        assert out.read_bytes() == expected, f"backup {i} differs"


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "lost+found" not in p.parts}


def test_ext4_mounted_on_the_device_restores_fsck_clean(
    cli: RunCli, repo: Path, make_device: MakeDevice, storage: Path, scratch: Path
) -> None:
    """No sync before the backups: the take freezes the file system, which puts its dirty data on disk."""
    dev = make_device(32 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True)
    mnt = scratch / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", dev, str(mnt)], check=True)
    expected: list[tuple[str, dict[str, bytes]]] = []
    try:
        for i in range(6):
            (mnt / f"file{i}").write_bytes(os.urandom(300_000 + i * 7_000))
        (mnt / "dir").mkdir()
        (mnt / "dir" / "text").write_text("first\n" * 5000)
        full = cli("full", "-r", repo, dev, "--freeze", mnt, *blksnap_args(storage))
        assert full.code == 0, full.err
        expected.append((full.json["id"], files_of(mnt)))
        (mnt / "file1").unlink()
        with open(mnt / "file2", "r+b") as f:
            f.seek(100_000)
            f.write(os.urandom(50_000))
        (mnt / "dir" / "new").write_bytes(os.urandom(1_000_000))
        incr = cli("incr", "-r", repo, dev, "--freeze", mnt, *blksnap_args(storage))
        assert incr.code == 0, incr.err
        assert incr.json["method"] == "cbt"
        expected.append((incr.json["id"], files_of(mnt)))
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    for i, (backup_id, files) in enumerate(expected):
        image = scratch / f"fs{i}.img"
        assert cli("restore", "-r", repo, backup_id, image).code == 0
        fsck = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        subprocess.run(["mount", "-o", "ro,loop,noload", str(image), str(mnt)], check=True)
        try:
            assert files_of(mnt) == files, f"backup {i}: the files differ"
        finally:
            subprocess.run(["umount", str(mnt)], check=True)


def test_two_devices_in_one_snapshot(
    cli: RunCli, repo: Path, make_device: MakeDevice, storage: Path, scratch: Path
) -> None:
    a, b = make_device(8 * MiB), make_device(6 * MiB)
    full = cli("full", "-r", repo, a, b, *blksnap_args(storage))
    assert full.code == 0, full.err
    firsts = {a: read_device(a), b: read_device(b)}
    write_device(a, 0, os.urandom(MiB))
    write_device(b, 3 * MiB, os.urandom(256 << 10))
    incr = cli("incr", "-r", repo, a, b, *blksnap_args(storage))
    assert incr.code == 0, incr.err
    assert [x["method"] for x in incr.json["backups"]] == ["cbt", "cbt"]
    for dev, first, latest in zip((a, b), full.json["backups"], incr.json["backups"], strict=True):
        out = scratch / "out.img"
        assert cli("restore", "-r", repo, first["id"], out).code == 0
        assert out.read_bytes() == firsts[dev]
        out.unlink()
        assert cli("restore", "-r", repo, latest["id"], out).code == 0
        assert out.read_bytes() == read_device(dev)
        out.unlink()


class OverwriteDuringTheRead:
    """A progress reporter that overwrites the whole device once the backup has started reading it."""

    def __init__(self, device: str, data: bytes) -> None:
        self.device, self.data, self.done = device, data, False

    def start(self, total_bytes: int, description: str) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        if not self.done:
            self.done = True
            write_device(self.device, 0, self.data)

    def finish(self) -> None:
        pass

    def notice(self, message: str) -> None:
        pass


def test_overflow_fails_before_commit_and_the_device_loses_nothing(
    cli: RunCli, repo: Path, make_device: MakeDevice, storage: Path, scratch: Path
) -> None:
    """A 3 MiB storage (the module never uses its first 2 MiB) cannot hold 16 MiB of old data."""
    dev = make_device()
    new = os.urandom(16 * MiB)
    repository = open_repository(str(repo))
    options = BackupOptions(dev, "full", provider="blksnap", diff_storage=str(storage),
                            diff_storage_limit=3 * MiB)
    with pytest.raises(SnapshotFailedError, match="overflowed") as info:
        run_backup(repository, options, OverwriteDuringTheRead(dev, new))
    assert info.value.exit_code == 6
    assert repository.list_backups() == []  # nothing committed
    assert read_device(dev) == new  # the writer saw no error and lost nothing
    again = cli("full", "-r", repo, dev, *blksnap_args(storage))  # with room enough, the next one works
    assert again.code == 0, again.err
    out = scratch / "out.img"
    assert cli("restore", "-r", repo, again.json["id"], out).code == 0
    assert out.read_bytes() == new


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_backup_leaves_no_snapshot_behind(
    cli: RunCli, repo: Path, make_device: MakeDevice, storage: Path, scratch: Path, real_module: BlksnapModule,
    sig: signal.Signals,
) -> None:
    dev = make_device()
    reading = scratch / "reading"
    pid = backup_in_a_slow_child(["full", "-r", str(repo), dev, *blksnap_args(storage)], FileReader, reading)
    wait_for(reading)
    assert len(real_module.snapshot_collect()) == 1
    os.kill(pid, sig)
    _, status = os.waitpid(pid, 0)
    if sig == signal.SIGTERM:
        assert os.waitstatus_to_exitcode(status) == 143
        assert cli("blksnap", "status", "--json").json["snapshots"] == []  # it destroyed its own
        next_run = cli("full", "-r", repo, dev, *blksnap_args(storage))
        assert "left by a cbtbackup run" not in next_run.err
    else:
        left = cli("blksnap", "status", "--json").json["snapshots"]
        assert len(left) == 1 and left[0]["owner"] == {"pid": pid, "devices": [dev], "running": False}
        next_run = cli("full", "-r", repo, dev, *blksnap_args(storage))
        assert f"destroyed snapshot {left[0]['id']} left by a cbtbackup run that was killed" in next_run.err
    assert next_run.code == 0, next_run.err
    assert cli("blksnap", "status", "--json").json["snapshots"] == []
    assert [b["id"] for b in cli("list", "-r", repo, "--json").json["backups"]] == [next_run.json["id"]]
    out = scratch / "out.img"
    assert cli("restore", "-r", repo, next_run.json["id"], out).code == 0
    assert out.read_bytes() == read_device(dev)


def test_detach_is_refused_while_a_taken_snapshot_holds_the_device(
    cli: RunCli, make_device: MakeDevice, storage: Path
) -> None:
    """The real module would detach and let new writes into the image unpreserved."""
    dev = make_device(4 * MiB)
    group = BlksnapProvider([dev], str(storage), 16 * MiB).open_group()
    try:
        cli("blksnap", "detach", dev).assert_one_line_error(4, "taken snapshot")
        before = group.sessions[0].image.read(0, 64 << 10)
        write_device(dev, 0, os.urandom(64 << 10))
        assert group.sessions[0].image.read(0, 64 << 10) == before  # still copy-on-write
    finally:
        group.close()
    assert cli("blksnap", "detach", dev).code == 0


def test_the_changes_number_wraps_at_255_into_a_scan(
    cli: RunCli, repo: Path, make_device: MakeDevice, storage: Path, real_module: BlksnapModule
) -> None:
    """Snapshot 255 is reported as 255 under a new generation and the next as 1: both backups scan."""
    dev = make_device(2 * MiB)
    assert cli("full", "-r", repo, dev, *blksnap_args(storage)).code == 0  # snapshot 1
    device = real_module.device(dev)
    storage_file = storage / "store"
    storage_file.write_bytes(b"")
    try:
        for i in range(253):  # other tools' snapshots
            snap_id = real_module.snapshot_create(str(storage_file), 3 * MiB)
            try:
                device.snapshot_add(snap_id)
                real_module.snapshot_take(snap_id)
            except Exception as e:
                raise AssertionError(f"iteration {i}: {e}; size {storage_file.stat().st_size}") from e
            finally:
                real_module.snapshot_destroy(snap_id)
        assert device.cbt_info().changes_number == 254
    finally:
        device.close()
    write_device(dev, 0, b"x" * 4096)
    at_255 = cli("incr", "-r", repo, dev, *blksnap_args(storage))
    assert at_255.json["method"] == "scan" and "generation changed" in at_255.err
    write_device(dev, 8192, b"y" * 4096)
    after = cli("incr", "-r", repo, dev, *blksnap_args(storage))
    assert after.json["method"] == "scan" and "did not advance" in after.err
    write_device(dev, 16384, b"z" * 4096)
    assert cli("incr", "-r", repo, dev, *blksnap_args(storage)).json["method"] == "cbt"


@pytest.mark.parametrize("kind", ["file", "block device"])
def test_difference_storage_in_a_file_or_on_a_block_device(
    cli: RunCli, repo: Path, make_device: MakeDevice, scratch: Path, kind: str
) -> None:
    dev = make_device(4 * MiB)
    if kind == "file":
        storage = scratch / "storage.file"
        storage.write_bytes(b"")
    else:
        storage = Path(make_device(16 * MiB))
    args = ("--provider", "blksnap", "--diff-storage", str(storage), "--diff-storage-limit", "16MiB", "--json")
    full = cli("full", "-r", repo, dev, *args)
    assert full.code == 0, full.err
    write_device(dev, MiB, os.urandom(300_000))
    incr = cli("incr", "-r", repo, dev, *args)
    assert incr.code == 0, incr.err
    assert incr.json["method"] == "cbt"
    out = scratch / "out.img"
    assert cli("restore", "-r", repo, incr.json["id"], out).code == 0
    assert out.read_bytes() == read_device(dev)


def test_blocks_marked_dirty_by_hand_are_read_by_the_next_incremental(
    cli: RunCli, repo: Path, make_device: MakeDevice, storage: Path, real_module: BlksnapModule
) -> None:
    """CBTDIRTY: what a tool knows changed behind the filter's back goes into the map like a write."""
    dev = make_device(4 * MiB)
    assert cli("full", "-r", repo, dev, *blksnap_args(storage)).code == 0
    device = real_module.device(dev)
    try:
        device.mark_dirty([(MiB, 64 << 10)])
    finally:
        device.close()
    incr = cli("incr", "-r", repo, dev, *blksnap_args(storage))
    assert incr.json["method"] == "cbt" and incr.json["bytes_scanned"] == 64 << 10
