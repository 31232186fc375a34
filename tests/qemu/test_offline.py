"""qcow2 images no VM is using: cbtbackup runs qemu-storage-daemon itself and follows the image's bitmaps."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from cbtbackup.engine.qemu.provider import NbdImage
from tests.conftest import RunCli
from tests.killing import backup_in_a_slow_child, wait_for
from tests.qemu.conftest import Disk, Vm, restored

MiB = 1 << 20
KiB = 1 << 10


def bitmaps_of(image: Path) -> list[str]:
    info = subprocess.run(["qemu-img", "info", "--output=json", "-U", str(image)], check=True,
                          capture_output=True, text=True).stdout
    data = json.loads(info).get("format-specific", {}).get("data", {})
    return [b["name"] for b in data.get("bitmaps", [])]


def test_a_chain_of_full_and_three_incrementals_restores_each_point(
    cli: RunCli, repo: Path, disk: Disk, tmp_path: Path, nbd_reads: list[int]
) -> None:
    full = cli("full", "-r", repo, disk.path, "--json")  # auto: a qcow2 image goes through QEMU
    assert full.code == 0, full.err
    assert (full.json["provider"], full.json["method"]) == ("qemu", "full")
    assert nbd_reads == [6 * MiB]  # the allocated data only: zero ranges are recorded, not read
    copies = [tmp_path / "at0.qcow2"]
    shutil.copyfile(disk.path, copies[0])  # the image as each backup saw it, for qemu-img compare
    points = [(full.json["id"], bytes(disk.model))]
    for round_no in range(3):
        for i in range(6):  # 64 KiB writes spread over the disk, aligned to the bitmap's granularity
            disk.write(((round_no * 7 + i * 13) % 60) * MiB + i * 64 * KiB, 64 * KiB, 0x30 + round_no)
        # The tracking check off: its sampled block would be read too, where it lands on allocated data.
        incr = cli("incr", "-r", repo, disk.path, "--verify-unchanged", "0", "--json")
        assert incr.code == 0, incr.err
        assert incr.json["method"] == "cbt", incr.err
        assert nbd_reads[-1] == 6 * 64 * KiB  # exactly the dirty blocks
        points.append((incr.json["id"], bytes(disk.model)))
        copies.append(tmp_path / f"at{round_no + 1}.qcow2")
        shutil.copyfile(disk.path, copies[-1])
        assert len(bitmaps_of(disk.path)) == 1  # the chain keeps only the newest bitmap
    for i, (backup_id, expected) in enumerate(points):
        raw = tmp_path / f"point{i}.raw"
        assert cli("restore", "-r", repo, backup_id, raw).code == 0
        assert raw.read_bytes() == expected
        compare = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(raw), str(copies[i])],
                                 capture_output=True, text=True)
        assert compare.returncode == 0, compare.stdout


def test_one_percent_of_64k_writes_reads_at_most_two_percent(
    cli: RunCli, repo: Path, disk: Disk, tmp_path: Path, nbd_reads: list[int]
) -> None:
    assert cli("full", "-r", repo, disk.path).code == 0
    for block in range(0, 64 * MiB, 100 * 64 * KiB):  # 1 % of the disk's 64 KiB blocks
        disk.write(block, 64 * KiB, 0x5A)
    incr = cli("incr", "-r", repo, disk.path, "--json")
    assert incr.json["method"] == "cbt"
    assert nbd_reads[-1] <= 64 * MiB * 2 // 100  # the changed 1 %, and the tracking check's sample
    assert incr.json["bytes_sampled_unchanged"] == 2 * 64 * KiB  # 0.1 % of 64 MiB, in whole 64 KiB blocks
    assert restored(cli, repo, incr.json["id"], tmp_path / "out.raw") == bytes(disk.model)


def test_a_bitmap_removed_by_hand_makes_the_next_incremental_a_scan(
    cli: RunCli, repo: Path, disk: Disk, tmp_path: Path
) -> None:
    assert cli("full", "-r", repo, disk.path).code == 0
    [name] = bitmaps_of(disk.path)
    subprocess.run(["qemu-img", "bitmap", "--remove", str(disk.path), name], check=True)
    disk.write(MiB, 64 * KiB, 0x77)
    incr = cli("incr", "-r", repo, disk.path, "--json")
    assert incr.code == 0 and incr.json["method"] == "scan"
    assert f"the dirty bitmap {name} that tracks the writes since the previous backup is missing" in incr.err
    assert len([line for line in incr.err.splitlines() if line.strip()]) == 1
    assert restored(cli, repo, incr.json["id"], tmp_path / "out.raw") == bytes(disk.model)
    disk.write(2 * MiB, 64 * KiB, 0x78)  # the scan started a new bitmap chain: CBT again
    assert cli("incr", "-r", repo, disk.path, "--json").json["method"] == "cbt"


def test_an_image_left_by_a_killed_qemu_makes_the_next_incremental_a_scan(
    cli: RunCli, repo: Path, disk: Disk, tmp_path: Path
) -> None:
    assert cli("full", "-r", repo, disk.path).code == 0
    machine = Vm(disk, tmp_path)
    machine.write(3 * MiB, 64 * KiB, 0x66)
    machine.stop(kill=True)  # the bitmap stays flagged in-use in the image
    incr = cli("incr", "-r", repo, disk.path, "--json")
    assert incr.code == 0, incr.err
    assert incr.json["method"] == "scan" and "inconsistent" in incr.err
    assert restored(cli, repo, incr.json["id"], tmp_path / "out.raw") == bytes(disk.model)


def test_an_image_a_running_vm_holds_is_refused_with_a_hint(cli: RunCli, repo: Path, vm: Vm) -> None:
    cli("full", "-r", repo, vm.disk.path).assert_one_line_error(4, "is in use", "--qmp")


def test_a_full_starts_a_new_chain_and_drops_the_old_bitmaps(cli: RunCli, repo: Path, disk: Disk) -> None:
    assert cli("full", "-r", repo, disk.path).code == 0
    first = bitmaps_of(disk.path)
    assert cli("full", "-r", repo, disk.path).code == 0
    second = bitmaps_of(disk.path)
    assert len(second) == 1 and second != first


def test_restores_to_a_new_qcow2_and_onto_the_original_image(
    cli: RunCli, repo: Path, disk: Disk, tmp_path: Path
) -> None:
    full = cli("full", "-r", repo, disk.path, "--json")
    at_full = bytes(disk.model)
    fresh = tmp_path / "fresh.qcow2"
    assert cli("restore", "-r", repo, full.json["id"], fresh, "--format", "qcow2").code == 0
    assert subprocess.run(["qemu-img", "compare", str(fresh), str(disk.path)], capture_output=True).returncode == 0
    assert subprocess.run(["qemu-img", "info", str(fresh)], capture_output=True, text=True).stdout.count("qcow2")
    disk.write(7 * MiB, 64 * KiB, 0x99)  # the VM changes its disk; then the user rolls it back
    cli("restore", "-r", repo, full.json["id"], disk.path, "--force").assert_one_line_error(
        2, "is a qcow2 image", "--format qcow2")
    rolled = cli("restore", "-r", repo, full.json["id"], disk.path, "--format", "qcow2", "--force")
    assert rolled.code == 0, rolled.err
    disk.model[:] = at_full
    assert restored(cli, repo, full.json["id"], tmp_path / "check.raw") == at_full
    raw = tmp_path / "now.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(disk.path), str(raw)], check=True)
    assert raw.read_bytes() == at_full
    incr = cli("incr", "-r", repo, disk.path, "--json")  # the bitmap saw the restore's writes
    assert incr.code == 0 and incr.json["method"] == "cbt"
    assert restored(cli, repo, incr.json["id"], tmp_path / "out.raw") == at_full


def test_a_restore_onto_an_image_a_vm_runs_is_refused(cli: RunCli, repo: Path, disk: Disk, tmp_path: Path) -> None:
    full = cli("full", "-r", repo, disk.path, "--json")
    machine = Vm(disk, tmp_path)
    try:
        cli("restore", "-r", repo, full.json["id"], disk.path, "--format", "qcow2", "--force").assert_one_line_error(
            4, "is in use")
    finally:
        machine.stop()


def test_a_killed_backup_leaves_the_image_and_its_bitmaps_usable(
    cli: RunCli, repo: Path, disk: Disk, tmp_path: Path
) -> None:
    """The storage daemon dies with cbtbackup and closes the image cleanly: the killed run's bitmap joins the
    chain, and the next incremental is CBT and right."""
    assert cli("full", "-r", repo, disk.path).code == 0
    disk.write(9 * MiB, 64 * KiB, 0x61)
    reading = tmp_path / "reading"
    pid = backup_in_a_slow_child(["incr", "-r", str(repo), str(disk.path)], NbdImage, reading)
    wait_for(reading)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    deadline = time.monotonic() + 30
    while subprocess.run(["pgrep", "-f", f"qemu-storage-daemon.*{disk.path}"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "the storage daemon outlived cbtbackup"
        time.sleep(0.05)
    assert len(bitmaps_of(disk.path)) == 2  # the previous backup's, and the killed run's
    disk.write(11 * MiB, 64 * KiB, 0x62)
    incr = cli("incr", "-r", repo, disk.path, "--json")
    assert incr.code == 0 and incr.json["method"] == "cbt", incr.err
    assert restored(cli, repo, incr.json["id"], tmp_path / "out.raw") == bytes(disk.model)
