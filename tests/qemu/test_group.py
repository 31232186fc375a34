"""Consistency groups of QEMU disks: several drives of one running VM taken in one QMP transaction, and
several offline images each locked by its own storage daemon before any is read."""

from __future__ import annotations

import threading
from pathlib import Path

from tests.conftest import MakeImage, RunCli
from tests.qemu.conftest import Disk, Vm

MiB = 1 << 20
SLOT = 64 << 10
SIZE = 64 * MiB


def slots_written(image: bytes) -> set[int]:
    return {i for i in range(SIZE // SLOT) if image[i * SLOT] != 0}


def test_ordered_writes_across_two_drives_of_a_vm_are_never_torn_apart(
    cli: RunCli, repo: Path, tmp_path: Path
) -> None:
    """The guest writes slot n of drive A, and once that landed slot n of drive B, while group backups run:
    in no backup is a slot of B written whose slot of A is not."""
    a, b = Disk(tmp_path / "a.qcow2", SIZE), Disk(tmp_path / "b.qcow2", SIZE)
    vm = Vm(a, tmp_path, (b,))
    stop = threading.Event()
    done = [0]

    def guest() -> None:
        for n in range(SIZE // SLOT):
            if stop.is_set():
                return
            vm.write(n * SLOT, 4096, n % 250 + 1, drive=0)
            vm.write(n * SLOT, 4096, n % 250 + 1, drive=1)
            done[0] = n + 1

    writer = threading.Thread(target=guest)
    taken = []
    try:
        writer.start()
        args = ("--qmp", str(vm.qmp_path), "--device", "disk0", "--device", "disk1", "--json",
                "--verify-unchanged", "0")
        for round_no in range(6):
            result = cli("full" if round_no == 0 else "incr", "-r", repo, a.path, b.path, *args)
            assert result.code == 0, result.err
            first, second = result.json["backups"]
            assert (first["provider"], second["provider"]) == ("qemu", "qemu")
            assert round_no == 0 or (first["method"], second["method"]) == ("cbt", "cbt"), result.err
            taken.append((first["id"], second["id"]))
    finally:
        stop.set()
        writer.join()
    assert vm.execute("query-block-jobs") == [] and vm.execute("query-block-exports") == []
    vm.stop()
    seen = []
    for id_a, id_b in taken:
        out_a, out_b = tmp_path / "ra.raw", tmp_path / "rb.raw"
        assert cli("restore", "-r", repo, id_a, out_a, "--force").code == 0
        assert cli("restore", "-r", repo, id_b, out_b, "--force").code == 0
        in_a, in_b = slots_written(out_a.read_bytes()), slots_written(out_b.read_bytes())
        assert in_b <= in_a, f"B holds slots whose A write is missing: {sorted(in_b - in_a)[:5]}"
        seen.append(len(in_b))
    assert seen[-1] > seen[0] and len(set(seen)) >= 3, (seen, done)  # the guest wrote between the takes


def test_offline_images_in_one_group(cli: RunCli, repo: Path, tmp_path: Path) -> None:
    disks = [Disk(tmp_path / f"d{i}.qcow2", 8 * MiB) for i in range(2)]
    disks[0].write(MiB, 64 << 10, 0x31)
    full = cli("full", "-r", repo, *[d.path for d in disks], "--json")
    assert full.code == 0, full.err
    disks[1].write(3 * MiB, 64 << 10, 0x32)
    incr = cli("incr", "-r", repo, *[d.path for d in disks], "--json", "--verify-unchanged", "0")
    assert incr.code == 0, incr.err
    assert [(b["method"], b["bytes_scanned"]) for b in incr.json["backups"]] == [("cbt", 0), ("cbt", 64 << 10)]
    for backup, disk in zip(incr.json["backups"], disks, strict=True):
        out = tmp_path / "out.raw"
        assert cli("restore", "-r", repo, backup["id"], out, "--force").code == 0
        assert out.read_bytes() == bytes(disk.model)


def test_a_group_of_a_vm_disk_and_another_provider_is_refused(
    cli: RunCli, repo: Path, vm: Vm, make_image: MakeImage, tmp_path: Path
) -> None:
    plain = make_image(MiB)
    cli("full", "-r", repo, vm.disk.path, plain, "--qmp", vm.qmp_path, "--device", "disk0").assert_one_line_error(
        2, "--device names each source's disk")
    other = Disk(tmp_path / "other.qcow2", MiB)
    cli("full", "-r", repo, vm.disk.path, other.path, "--qmp", vm.qmp_path, "--device", "disk0", "--device",
        "disk9").assert_one_line_error(2, "no block node or drive 'disk9'")
    cli("full", "-r", repo, other.path, plain).assert_one_line_error(2, "must share a provider")
    assert cli("list", "-r", repo, "--json").json["backups"] == []
    assert vm.execute("query-block-jobs") == [] and vm.execute("query-block-exports") == []
