"""Backups of block devices through the blksnap module — the simulator behind the ioctl call."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from cbtbackup.engine import Snapshot
from cbtbackup.engine.blksnap import kernel
from cbtbackup.engine.blksnap.kernel import BlksnapModule
from cbtbackup.engine.providers import BlksnapProvider
from cbtbackup.errors import NotFoundError, SnapshotFailedError
from cbtbackup.pipeline.backup import BackupOptions, run_backup
from cbtbackup.pipeline.chains import default_name
from cbtbackup.repo.location import open_repository
from tests.blksnap.conftest import MakeDevice, read_device
from tests.blksnap.simulator import KernelSimulator
from tests.conftest import PASSPHRASE, RunCli

MiB = 1 << 20


@pytest.fixture
def repo(cli: RunCli, tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    assert cli("init", "-r", path, "--chunk-size", "256KiB").code == 0
    return path


def test_full_and_incrementals_restore_exactly(
    cli: RunCli, repo: Path, make_device: MakeDevice, simulator: KernelSimulator, tmp_path: Path
) -> None:
    dev = make_device()
    storage = tmp_path / "diff"
    storage.mkdir()
    args = ("--provider", "blksnap", "--diff-storage", storage, "--json")
    first = cli("full", "-r", repo, dev, *args)
    assert first.code == 0, first.err
    assert (first.json["provider"], first.json["name"]) == ("blksnap", default_name(dev))
    points = [(first.json["id"], read_device(dev))]
    for round_no in range(3):
        for i in range(5):
            simulator.write(dev, (round_no * 7 + i * 131) * 4096 % (8 * MiB - 70000), os.urandom(65536))
        inc = cli("incr", "-r", repo, dev, *args)
        assert inc.code == 0, inc.err
        assert inc.json["method"] == "cbt" and inc.json["bytes_scanned"] <= 10 * 65536
        points.append((inc.json["id"], read_device(dev)))
    for i, (backup_id, expected) in enumerate(points):
        out = tmp_path / f"r{i}.img"
        assert cli("restore", "-r", repo, backup_id, out).code == 0
        assert out.read_bytes() == expected
    assert simulator.snapshots == {} and len(simulator.destroyed) == 4  # destroyed after each backup
    flow = [r for r in simulator.requests if r != "SNAPSHOT_WAIT_EVENT"]
    assert flow[:12] == ["VERSION", "SNAPSHOT_COLLECT", "SNAPSHOT_COLLECT", "BLKFILTER_ATTACH", "SNAPSHOT_CREATE",
                         "SNAPSHOTADD", "SNAPSHOT_TAKE", "SNAPSHOTINFO", "CBTINFO", "CBTMAP", "SNAPSHOTINFO",
                         "SNAPSHOT_DESTROY"]


def test_the_cbt_map_is_read_in_32k_pieces(make_device: MakeDevice, simulator: KernelSimulator,
                                           tmp_path: Path) -> None:
    image = tmp_path / "sparse.img"
    with open(image, "wb") as f:
        f.truncate((40_000 << 16) + 4096)  # 40,001 blocks of 64 KiB (the last short): two pieces
    loop = subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True,
                          text=True).stdout.strip()
    try:
        module = BlksnapModule.open(simulator.env)
        dev = module.device(loop)
        module.close()
        try:
            dev.attach_filter()
            assert dev.attach_filter() is False  # EALREADY means attached already, not an error
            info = dev.cbt_info()
            assert info.block_count == 40_001
            simulator.write(loop, 39_999 << 16, b"late")
            simulator.requests.clear()
            volume = simulator.devices[dev.rdev].volume
            with Snapshot.create([volume], tmp_path) as snap:
                snap.take()
                cbt_map = dev.cbt_map(info.block_count)
            assert simulator.requests == ["CBTMAP", "CBTMAP"]
            assert len(cbt_map) == 40_001 and cbt_map[39_999] == 1 and cbt_map.count(0) == 40_000
            dev.detach_filter()
        finally:
            dev.close()
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)


def test_two_devices_in_one_snapshot(
    cli: RunCli, repo: Path, make_device: MakeDevice, simulator: KernelSimulator, tmp_path: Path
) -> None:
    a, b = make_device(), make_device(6 * MiB)
    args = ("--provider", "blksnap", "--diff-storage", tmp_path, "--json")
    full = cli("full", "-r", repo, a, b, *args)
    assert full.code == 0, full.err
    backups = full.json["backups"]
    assert [x["name"] for x in backups] == [default_name(a), default_name(b)]
    expected = {a: read_device(a), b: read_device(b)}
    simulator.write(a, 0, os.urandom(MiB))
    simulator.write(b, MiB, os.urandom(MiB))
    inc = cli("incr", "-r", repo, a, b, *args)
    assert inc.code == 0, inc.err
    assert [x["method"] for x in inc.json["backups"]] == ["cbt", "cbt"]
    for dev, backup in zip((a, b), backups, strict=True):
        out = tmp_path / f"{Path(dev).name}.out"
        assert cli("restore", "-r", repo, backup["id"], out).code == 0
        assert out.read_bytes() == expected[dev]
    for dev in (a, b):
        out = tmp_path / f"{Path(dev).name}.latest"
        assert cli("restore", "-r", repo, f"{default_name(dev)}@latest", out).code == 0
        assert out.read_bytes() == read_device(dev)
    assert simulator.snapshots == {}


class WritesDuringTheRead:
    """A progress reporter that overwrites the device while the backup reads it."""

    def __init__(self, sim: KernelSimulator, device: str) -> None:
        self.sim, self.device, self.done = sim, device, False

    def start(self, total_bytes: int, description: str) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        if not self.done:
            self.done = True
            self.sim.write(self.device, 0, os.urandom(4 * MiB))

    def finish(self) -> None:
        pass

    def notice(self, message: str) -> None:
        pass


def test_overflow_during_the_read_fails_cleanly(
    repo: Path, make_device: MakeDevice, simulator: KernelSimulator, tmp_path: Path
) -> None:
    dev = make_device()
    repository = open_repository(str(repo), passphrase=PASSPHRASE)
    options = BackupOptions(dev, "full", provider="blksnap", diff_storage=str(tmp_path),
                            diff_storage_limit=MiB)
    with pytest.raises(SnapshotFailedError, match="raise --diff-storage-limit") as info:
        run_backup(repository, options, WritesDuringTheRead(simulator, dev))
    assert info.value.exit_code == 6
    assert repository.list_backups() == []  # no manifest was written
    assert simulator.snapshots == {} and len(simulator.destroyed) == 1


@pytest.mark.parametrize(("request_name", "code"), [
    ("SNAPSHOTADD", errno.EBUSY),
    ("SNAPSHOT_TAKE", errno.EFAULT),
    ("SNAPSHOTINFO", errno.ENODEV),
    ("CBTINFO", errno.EIO),
    ("CBTMAP", errno.EIO),
])
def test_the_snapshot_is_destroyed_on_every_failure(
    cli: RunCli, repo: Path, make_device: MakeDevice, simulator: KernelSimulator, tmp_path: Path,
    request_name: str, code: int,
) -> None:
    dev = make_device()
    simulator.fail[request_name] = code
    result = cli("full", "-r", repo, dev, "--provider", "blksnap", "--diff-storage", tmp_path)
    assert result.code != 0 and "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1
    assert simulator.snapshots == {}  # destroyed
    assert len(simulator.destroyed) == 1
    assert cli("list", "-r", repo, "--json").json["backups"] == []
    assert cli("full", "-r", repo, dev, "--provider", "blksnap", "--diff-storage", tmp_path).code == 0


def test_failure_before_the_snapshot_exists(
    cli: RunCli, repo: Path, make_device: MakeDevice, simulator: KernelSimulator, tmp_path: Path
) -> None:
    dev = make_device()
    simulator.fail["BLKFILTER_ATTACH"] = errno.EBUSY
    cli("full", "-r", repo, dev, "--provider", "blksnap", "--diff-storage", tmp_path).assert_one_line_error(
        4, "another filter is attached")
    assert simulator.snapshots == {} and simulator.destroyed == []


def test_module_absent_half_loaded_and_wrong_version(
    cli: RunCli, repo: Path, make_device: MakeDevice, tmp_path: Path
) -> None:
    dev = make_device()
    absent = KernelSimulator(tmp_path / "absent", loaded=False)
    previous = kernel.use(absent.env)
    try:
        cli("full", "-r", repo, dev, "--provider", "blksnap").assert_one_line_error(3, "not loaded")
        assert cli("full", "-r", repo, dev, "--json").json["provider"] == "scan"  # auto: no module, a scan
        (absent.dev_root / "veeamblksnap").touch()
        cli("full", "-r", repo, dev, "--provider", "blksnap").assert_one_line_error(3, "modprobe bdevfilter")
        newer = KernelSimulator(tmp_path / "newer", version=(3, 1, 0, 0))
        kernel.use(newer.env)
        cli("full", "-r", repo, dev, "--provider", "blksnap").assert_one_line_error(2, "ABI 3.1")
        cli("blksnap", "status").assert_one_line_error(2, "ABI 3.1")
        veeam_as_2 = KernelSimulator(tmp_path / "mixed", version=(2, 0, 0, 0), dialect="7")
        kernel.use(veeam_as_2.env)
        cli("blksnap", "status").assert_one_line_error(2, "veeamblksnap speaks ABI 2.0", "7.x there")
    finally:
        kernel.use(previous)


def test_each_module_build_is_found_by_its_devices(
    cli: RunCli, repo: Path, make_device: MakeDevice, simulator: KernelSimulator, tmp_path: Path
) -> None:
    dev = make_device()
    assert cli("full", "-r", repo, dev, "--diff-storage", tmp_path, "--json").json["provider"] == "blksnap"  # auto
    status = cli("blksnap", "status", "--json").json
    if simulator.standalone:
        assert status["module"].startswith("Veeam standalone") and status["version"] == [7, 0, 0, 0]
        assert status["build"] == {"name": "standalone", "flags": 2}
        assert "MOD" in simulator.requests and "BLKFILTER_ATTACH" in simulator.requests
        assert not list(simulator.sys_block.iterdir())  # no sysfs filter file on 7.x
    else:
        assert status["module"] == "upstream blksnap 2.0" and status["version"] == [2, 0, 0, 0]
        assert status["build"] is None and "MOD" not in simulator.requests
    text = cli("blksnap", "status").out
    assert text.startswith(status["module"]) and ".".join(map(str, status["version"])) in text


def test_difference_storage_on_the_snapshotted_device(
    cli: RunCli, repo: Path, make_device: MakeDevice, simulator: KernelSimulator, tmp_path: Path
) -> None:
    dev = make_device(32 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", dev, str(mnt)], check=True)
    try:
        cli("full", "-r", repo, dev, "--provider", "blksnap", "--diff-storage", mnt).assert_one_line_error(
            2, "is being snapshotted")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert simulator.snapshots == {}


def test_the_255_overflow_report_gives_scans(
    cli: RunCli, repo: Path, make_device: MakeDevice, simulator: KernelSimulator, tmp_path: Path
) -> None:
    dev = make_device(2 * MiB)
    args = ("--provider", "blksnap", "--diff-storage", tmp_path, "--json")
    assert cli("full", "-r", repo, dev, *args).json["method"] == "full"  # snapshot 1
    volume = next(iter(simulator.devices.values())).volume
    for _ in range(253):  # other tools' snapshots: the next take is number 255
        with Snapshot.create([volume], tmp_path) as snap:
            snap.take()
    simulator.write(dev, 0, b"x" * 4096)
    at_255 = cli("incr", "-r", repo, dev, *args)
    assert at_255.json["method"] == "scan" and "generation changed" in at_255.err
    simulator.write(dev, 8192, b"y" * 4096)
    after = cli("incr", "-r", repo, dev, *args)  # reports 1 under the same new generation
    assert after.json["method"] == "scan" and "did not advance" in after.err
    simulator.write(dev, 16384, b"z" * 4096)
    assert cli("incr", "-r", repo, dev, *args).json["method"] == "cbt"
    out = tmp_path / "out.img"
    assert cli("restore", "-r", repo, "latest", out).code == 0
    assert out.read_bytes() == read_device(dev)


def test_status_and_detach(cli: RunCli, repo: Path, make_device: MakeDevice, simulator: KernelSimulator,
                           tmp_path: Path) -> None:
    dev = make_device()
    assert cli("full", "-r", repo, dev, "--provider", "blksnap", "--diff-storage", tmp_path).code == 0
    status = cli("blksnap", "status", dev, "--json").json
    assert status["version"] == list(simulator.version) and status["snapshots"] == []
    assert status["devices"][0]["filter"] == (None if simulator.standalone else "blksnap")  # 7.x: no sysfs
    assert status["devices"][0]["changes_number"] == 1
    assert cli("blksnap", "detach", dev).code == 0
    assert "generation_id" not in cli("blksnap", "status", dev, "--json").json["devices"][0]
    assert "no blksnap filter attached" in cli("blksnap", "status", dev).out
    cli("blksnap", "detach", dev).assert_one_line_error(3, "no blksnap filter is attached")


def test_why_the_storage_check_exists(make_device: MakeDevice, simulator: KernelSimulator, tmp_path: Path) -> None:
    """The module's quirk, met head on: SNAPSHOTADD of the device holding the storage 'succeeds' but adds
    nothing, so the take finds no device. The provider refuses such a storage before it gets here."""
    dev = make_device(32 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", dev, str(mnt)], check=True)
    module = BlksnapModule.open(simulator.env)
    device = module.device(dev)
    try:
        device.attach_filter()
        snap_id = module.snapshot_create(str(mnt), 64 * MiB)
        device.snapshot_add(snap_id)  # returns 0 ...
        with pytest.raises(NotFoundError, match="holds no device"):
            module.snapshot_take(snap_id)  # ... and nothing was added
        assert module.snapshot_collect() == [snap_id]
        module.snapshot_destroy(snap_id)
        assert module.snapshot_collect() == []
    finally:
        device.close()
        module.close()
        subprocess.run(["umount", str(mnt)], check=True)


def test_overflow_shows_as_failing_image_reads_and_is_reported_as_such(
    repo: Path, make_device: MakeDevice, simulator: KernelSimulator, tmp_path: Path
) -> None:
    """The real module fails image reads once its storage overflowed, before any event: exit 6, not 7."""
    dev = make_device()
    group = BlksnapProvider([dev], str(tmp_path), MiB).open_group()
    try:
        simulator.write(dev, 0, os.urandom(4 * MiB))  # overflows the 1 MiB limit
        with pytest.raises(SnapshotFailedError, match="overflowed") as info:
            group.sessions[0].image.read(0, MiB)
        assert info.value.exit_code == 6
    finally:
        group.close()


def test_detach_is_refused_while_a_snapshot_holds_the_device(
    cli: RunCli, make_device: MakeDevice, simulator: KernelSimulator, tmp_path: Path
) -> None:
    dev = make_device()
    group = BlksnapProvider([dev], str(tmp_path), 16 * MiB).open_group()
    try:
        cli("blksnap", "detach", dev).assert_one_line_error(4, "taken snapshot")
        assert dev_rdev(dev) in simulator.devices  # still tracking
    finally:
        group.close()
    assert cli("blksnap", "detach", dev).code == 0


def dev_rdev(path: str) -> int:
    return os.stat(path).st_rdev


def test_a_differential_reads_every_block_changed_since_its_base(
    cli: RunCli, repo: Path, make_device: MakeDevice, simulator: KernelSimulator, tmp_path: Path
) -> None:
    """The module's map keeps the number of the snapshot each block last changed in: enough for a
    differential against any earlier backup of the generation."""
    dev = make_device()
    storage = tmp_path / "diff"
    storage.mkdir()
    args = ("--provider", "blksnap", "--diff-storage", storage, "--json", "--verify-unchanged", "0")
    full = cli("full", "-r", repo, dev, *args[:-2])
    assert full.code == 0, full.err
    for block in (3, 40):
        simulator.write(dev, block * 65536, os.urandom(65536))
        assert cli("incr", "-r", repo, dev, *args).json["bytes_scanned"] == 65536
    simulator.write(dev, 90 * 65536, os.urandom(65536))
    diff = cli("incr", "-r", repo, dev, "--since", "full", *args)
    assert diff.code == 0, diff.err
    assert (diff.json["method"], diff.json["parent"], diff.json["bytes_scanned"]) == \
        ("cbt", full.json["id"], 3 * 65536)
    out = tmp_path / "r.img"
    assert cli("restore", "-r", repo, diff.json["id"], out).code == 0
    assert out.read_bytes() == read_device(dev)
