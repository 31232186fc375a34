"""Differentials of qcow2 disks: a backup taken with --keep-base leaves a bitmap that never stops recording,
and ``incr --since`` that backup reads exactly what changed since it — offline and in a running VM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import RunCli
from tests.qemu.conftest import Disk, Vm, restored
from tests.qemu.test_offline import bitmaps_of

MiB = 1 << 20
KiB = 1 << 10
BLOCK = 64 * KiB


def backup(cli: RunCli, repo: Path, kind: str, source: Path, *args: str) -> dict[str, Any]:
    extra = ("--verify-unchanged", "0") if kind == "incr" else ()  # NBD reads are counted exactly
    result = cli(kind, "-r", repo, source, "--json", *extra, *args)
    assert result.code == 0, result.err
    return result.json


def test_differentials_against_a_kept_base_read_every_change_since_it(
    cli: RunCli, repo: Path, disk: Disk, tmp_path: Path, nbd_reads: list[int]
) -> None:
    full = backup(cli, repo, "full", disk.path, "--keep-base")
    points = {full["id"]: bytes(disk.model)}
    names = bitmaps_of(disk.path)
    assert len(names) == 2 and sum(n.startswith("cbtbackup-base-") for n in names) == 1
    disk.write(8 * MiB, 2 * BLOCK, 0x31)
    first = backup(cli, repo, "incr", disk.path)
    assert (first["method"], nbd_reads[-1]) == ("cbt", 2 * BLOCK)
    disk.write(8 * MiB + BLOCK, 2 * BLOCK, 0x32)  # one block again, one new
    second = backup(cli, repo, "incr", disk.path)
    assert (second["method"], nbd_reads[-1]) == ("cbt", 2 * BLOCK)
    disk.write(30 * MiB, BLOCK, 0x33)
    diff = backup(cli, repo, "incr", disk.path, "--since", "full")
    # Three blocks at 8 MiB and one at 30 MiB: everything since the full, from the base bitmap alone.
    assert (diff["method"], diff["parent"], nbd_reads[-1]) == ("cbt", full["id"], 4 * BLOCK)
    points[diff["id"]] = bytes(disk.model)
    names = bitmaps_of(disk.path)
    assert len(names) == 2 and not any(n.startswith("cbtbackup-copy-") for n in names)  # the copy is gone
    disk.write(50 * MiB, BLOCK, 0x34)
    after = backup(cli, repo, "incr", disk.path)  # continues from the differential, by its own bitmap
    assert (after["method"], after["parent"], nbd_reads[-1]) == ("cbt", diff["id"], BLOCK)
    points[after["id"]] = bytes(disk.model)
    again = backup(cli, repo, "incr", disk.path, "--since", full["id"])
    assert (again["method"], nbd_reads[-1]) == ("cbt", 5 * BLOCK)
    points[again["id"]] = bytes(disk.model)
    for backup_id, expected in points.items():
        assert restored(cli, repo, backup_id, tmp_path / "out.raw") == expected

    # A newer --keep-base backup replaces the base: one per image.
    old_base = next(n for n in bitmaps_of(disk.path) if n.startswith("cbtbackup-base-"))
    backup(cli, repo, "incr", disk.path, "--keep-base")
    bases = [n for n in bitmaps_of(disk.path) if n.startswith("cbtbackup-base-")]
    assert len(bases) == 1 and bases != [old_base]


def test_without_a_kept_base_a_differential_scans_and_says_why(
    cli: RunCli, repo: Path, disk: Disk, tmp_path: Path
) -> None:
    full = backup(cli, repo, "full", disk.path)
    disk.write(8 * MiB, BLOCK, 0x41)
    backup(cli, repo, "incr", disk.path)
    disk.write(20 * MiB, BLOCK, 0x42)
    result = cli("incr", "-r", repo, disk.path, "--since", "full", "--json")
    assert result.code == 0, result.err
    assert (result.json["method"], result.json["parent"]) == ("scan", full["id"])
    scan_line = result.err.strip().splitlines()[-1]
    assert scan_line.startswith("cbtbackup: scan incremental: ") and f"the base backup {full['id']}" in scan_line
    assert restored(cli, repo, result.json["id"], tmp_path / "out.raw") == bytes(disk.model)


def test_a_differential_in_a_running_vm(cli: RunCli, repo: Path, vm: Vm, tmp_path: Path,
                                        nbd_reads: list[int]) -> None:
    args = ("--qmp", str(vm.qmp_path), "--device", "disk0")
    full = backup(cli, repo, "full", vm.disk.path, *args, "--keep-base")
    vm.write(8 * MiB, BLOCK, 0x51)
    backup(cli, repo, "incr", vm.disk.path, *args)
    vm.write(16 * MiB, BLOCK, 0x52)
    diff = backup(cli, repo, "incr", vm.disk.path, *args, "--since", "full")
    assert (diff["method"], diff["parent"], nbd_reads[-1]) == ("cbt", full["id"], 2 * BLOCK)
    assert restored(cli, repo, diff["id"], tmp_path / "out.raw") == bytes(vm.disk.model)
    node = next(n for n in vm.execute("query-named-block-nodes", flat=True) if n["node-name"] == "disk0")
    ours = {b["name"]: b for b in node["dirty-bitmaps"] if b["name"].startswith("cbtbackup-")}
    bases = [b for name, b in ours.items() if name.startswith("cbtbackup-base-")]
    assert len(ours) == 2 and len(bases) == 1 and bases[0]["recording"]  # the base still records
    assert vm.execute("query-block-jobs") == [] and vm.execute("query-block-exports") == []
