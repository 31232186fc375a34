"""A running VM's disk, through its QMP socket: point-in-time exports while the guest keeps writing."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from cbtbackup.engine.qemu.provider import NbdImage
from cbtbackup.pipeline.backup import BackupOptions, run_backup
from cbtbackup.pipeline.tracking_check import UnchangedSample
from cbtbackup.repo.location import open_repository
from tests.conftest import RunCli
from tests.killing import backup_in_a_slow_child, wait_for
from tests.qemu.conftest import Vm, restored

MiB = 1 << 20
KiB = 1 << 10


def vm_args(vm: Vm) -> tuple[str, ...]:
    return ("--qmp", str(vm.qmp_path), "--device", "disk0", "--json")


def test_writes_during_a_backup_land_in_the_next_one(cli: RunCli, repo: Path, vm: Vm, tmp_path: Path,
                                                     nbd_reads: list[int]) -> None:
    full = cli("full", "-r", repo, vm.disk.path, *vm_args(vm))
    assert full.code == 0, full.err
    assert full.json["provider"] == "qemu"
    points = [(full.json["id"], bytes(vm.disk.model))]
    vm.write(8 * MiB, 64 * KiB, 0x41)
    vm.write(50 * MiB, 128 * KiB, 0x42)
    at_take: list[bytes] = []

    def during(point: str) -> None:
        if point == "snapshot-taken":  # the guest writes after the take, while the backup reads
            at_take.append(bytes(vm.disk.model))
            vm.write(0, 64 * KiB, 0x43)  # over data the backup is about to read
            vm.write(20 * MiB, 64 * KiB, 0x44)

    repository = open_repository(str(repo))
    # The tracking check off: its sampled block would add to the exact NBD reads counted below.
    options = BackupOptions(str(vm.disk.path), "incr", provider="qemu", qmp=str(vm.qmp_path), device="disk0",
                            unchanged_sample=UnchangedSample.parse("0"))
    result = run_backup(repository, options, hook=during)
    assert result.manifest.method == "cbt"
    assert nbd_reads[-1] == 192 * KiB  # the two guest writes before the take
    points.append((result.manifest.ref.id, at_take[0]))
    after = cli("incr", "-r", repo, vm.disk.path, *vm_args(vm), "--verify-unchanged", "0")
    assert after.code == 0 and after.json["method"] == "cbt", after.err
    assert nbd_reads[-1] == 128 * KiB  # the writes made during the previous backup
    points.append((after.json["id"], bytes(vm.disk.model)))
    for backup_id, expected in points:
        assert restored(cli, repo, backup_id, tmp_path / "out.raw") == expected
    assert vm.execute("query-status")["status"] in ("running", "prelaunch")
    assert vm.execute("query-block-jobs") == [] and vm.execute("query-block-exports") == []
    names = {n["node-name"] for n in vm.execute("query-named-block-nodes", flat=True)}
    assert not any(name.startswith("cbtbackup-") for name in names)  # the fleecing overlay is gone


def test_a_gone_socket_and_an_unknown_device_each_give_one_line(cli: RunCli, repo: Path, vm: Vm,
                                                                tmp_path: Path) -> None:
    gone = tmp_path / "nowhere.sock"
    cli("full", "-r", repo, vm.disk.path, "--qmp", gone, "--device", "disk0").assert_one_line_error(
        3, "QMP socket", "nowhere.sock")
    cli("full", "-r", repo, vm.disk.path, "--qmp", vm.qmp_path, "--device", "disk9").assert_one_line_error(
        2, "no block node or drive 'disk9'", "disk0")
    cli("full", "-r", repo, vm.disk.path, "--qmp", vm.qmp_path).assert_one_line_error(2, "--qmp and --device")
    other = tmp_path / "other.qcow2"
    other.write_bytes(b"")
    cli("full", "-r", repo, other, "--provider", "qemu", "--qmp", vm.qmp_path, "--device",
        "disk0").assert_one_line_error(2, "not", str(other))


def test_a_killed_backup_leaves_the_vm_running_and_the_next_incremental_right(
    cli: RunCli, repo: Path, vm: Vm, tmp_path: Path
) -> None:
    assert cli("full", "-r", repo, vm.disk.path, *vm_args(vm)).code == 0
    vm.write(10 * MiB, 64 * KiB, 0x51)
    reading = tmp_path / "reading"
    pid = backup_in_a_slow_child(["incr", "-r", str(repo), str(vm.disk.path), *vm_args(vm)[:-1]], NbdImage, reading)
    wait_for(reading)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert vm.execute("query-status")["status"] in ("running", "prelaunch")  # the VM never noticed
    assert vm.execute("query-block-jobs")  # the killed run's fleecing job is still there
    vm.write(30 * MiB, 64 * KiB, 0x52)
    nxt = cli("incr", "-r", repo, vm.disk.path, *vm_args(vm))
    assert nxt.code == 0, nxt.err
    assert "removed what a killed backup left in QEMU" in nxt.err
    assert nxt.json["method"] == "cbt"  # the killed run's bitmap joined the chain: nothing was missed
    assert restored(cli, repo, nxt.json["id"], tmp_path / "out.raw") == bytes(vm.disk.model)
    assert vm.execute("query-block-jobs") == []


def test_a_monitor_another_client_holds_gives_one_line(cli: RunCli, repo: Path, vm: Vm) -> None:
    """libvirt holds its VM's QMP monitor; QEMU then answers a second client with silence."""
    cli("full", "-r", repo, vm.disk.path, "--qmp", vm.test_qmp_path, "--device", "disk0").assert_one_line_error(
        4, "sent no greeting", "another client")
