"""LVM thin volumes through thin snapshots and thin_delta, inside the test VM (Debian's kernel has dm-thin):
full → writes and discards → five incrementals that read exactly the changed chunks → every backup restored
byte-exact; the scans (with their lines) where the previous snapshot cannot vouch; a differential."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunCli
from tests.kernel.conftest import read_device, write_device

pytestmark = pytest.mark.kernel

MiB = 1 << 20
CHUNK = 64 << 10  # the pool's chunk: thin_delta's unit, and the CBT block


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


class ThinVolume:
    def __init__(self, scratch: Path) -> None:
        backing = scratch / "pv.img"
        with open(backing, "wb") as f:
            f.truncate(400 * MiB)
        subprocess.run(["modprobe", "dm_thin_pool"], check=True)
        self.loop = sh("losetup", "--find", "--show", str(backing)).strip()
        self.vg = f"cbt{secrets.token_hex(3)}"
        sh("pvcreate", "-q", self.loop)
        sh("vgcreate", "-q", self.vg, self.loop)
        sh("lvcreate", "-q", "--type", "thin-pool", "-L", "200M", "--chunksize", "64k", "-n", "pool", self.vg)
        sh("lvcreate", "-q", "-V", "64M", "-T", f"{self.vg}/pool", "-n", "data")
        self.path = f"/dev/{self.vg}/data"

    def ours(self) -> list[str]:
        report = json.loads(sh("lvs", "--reportformat", "json", "-o", "lv_name,origin", self.vg))
        return sorted(r["lv_name"] for r in report["report"][0]["lv"] if r["lv_name"].startswith("cbtbackup-"))

    def discard(self, offset: int, length: int) -> None:
        sh("blkdiscard", "-o", str(offset), "-l", str(length), self.path)

    def remove(self) -> None:
        subprocess.run(["vgremove", "-q", "-f", self.vg], capture_output=True)
        subprocess.run(["losetup", "-d", self.loop], capture_output=True)


@pytest.fixture
def thin(scratch: Path) -> Iterator[ThinVolume]:
    volume = ThinVolume(scratch)
    try:
        write_device(volume.path, 0, os.urandom(16 * MiB))
        yield volume
    finally:
        volume.remove()


def backup(cli: RunCli, repo: Path, kind: str, source: str, *extra: str) -> dict[str, object]:
    args = ("--verify-unchanged", "0") if kind == "incr" else ()
    result = cli(kind, "-r", repo, source, "--json", *args, *extra)
    assert result.code == 0, result.err
    return dict(result.json)


def test_full_then_five_incrementals_read_exactly_the_changed_chunks(
    cli: RunCli, repo: Path, thin: ThinVolume, scratch: Path
) -> None:
    full = backup(cli, repo, "full", thin.path)
    assert (full["provider"], full["method"]) == ("lvmthin", "full")
    taken = {str(full["id"]): read_device(thin.path)}
    assert len(thin.ours()) == 1
    for round_no in range(5):
        chunks = {(round_no * 37 + i * 101) % 1000 for i in range(6)}
        for chunk in chunks:
            write_device(thin.path, chunk * CHUNK, os.urandom(CHUNK))
        changed = len(chunks)
        if round_no == 1:  # a discard of written data: the newer snapshot maps it no more, so zeros
            thin.discard(4 * MiB, MiB)
            changed += len({*range(64, 80)} - chunks)
        if round_no == 3:  # a partial write: the whole chunk is remapped
            write_device(thin.path, 900 * CHUNK + 4096, os.urandom(4096))
            changed += int(900 not in chunks)
        result = backup(cli, repo, "incr", thin.path)
        assert result["method"] == "cbt", result["notes"]
        assert result["bytes_scanned"] == changed * CHUNK, round_no
        taken[str(result["id"])] = read_device(thin.path)
        assert len(thin.ours()) == 1  # the older snapshot went once the new backup was in
    for i, (backup_id, expected) in enumerate(taken.items()):
        out = scratch / f"restored-{i}.img"
        assert cli("restore", "-r", repo, backup_id, out).code == 0
        assert out.read_bytes() == expected, f"backup {i} differs"
        out.unlink()


def test_where_the_previous_snapshot_cannot_vouch_it_scans_and_says_why(
    cli: RunCli, repo: Path, thin: ThinVolume, scratch: Path
) -> None:
    backup(cli, repo, "full", thin.path)
    [snapshot] = thin.ours()
    sh("lvremove", "-q", "-y", f"{thin.vg}/{snapshot}")
    write_device(thin.path, 20 * MiB, os.urandom(CHUNK))
    result = backup(cli, repo, "incr", thin.path)
    assert result["method"] == "scan"
    assert any("scan incremental" in n and "snapshot the previous backup read is not on" in n
               for n in result["notes"]), result["notes"]  # type: ignore[attr-defined]
    assert backup(cli, repo, "incr", thin.path)["method"] == "cbt"  # the new chain is trusted again
    sh("lvextend", "-q", "-L", "+16M", thin.path)
    resized = backup(cli, repo, "incr", thin.path)
    assert (resized["kind"], resized["device_size"]) == ("full", 80 * MiB)
    assert any("was resized" in n for n in resized["notes"])  # type: ignore[attr-defined]
    out = scratch / "r.img"
    assert cli("restore", "-r", repo, str(resized["id"]), out).code == 0
    assert out.read_bytes() == read_device(thin.path)
    assert len(thin.ours()) == 1


def test_a_differential_against_a_kept_base(cli: RunCli, repo: Path, thin: ThinVolume, scratch: Path) -> None:
    full = backup(cli, repo, "full", thin.path, "--keep-base")
    for chunk in (5, 6):
        write_device(thin.path, chunk * CHUNK, os.urandom(CHUNK))
        backup(cli, repo, "incr", thin.path)
    assert len(thin.ours()) == 2 and any(name.endswith("-base") for name in thin.ours())
    diff = backup(cli, repo, "incr", thin.path, "--since", "full")
    assert (diff["method"], diff["parent"], diff["bytes_scanned"]) == ("cbt", full["id"], 2 * CHUNK)
    out = scratch / "d.img"
    assert cli("restore", "-r", repo, str(diff["id"]), out).code == 0
    assert out.read_bytes() == read_device(thin.path)


def test_bad_sources_are_one_line(cli: RunCli, repo: Path, thin: ThinVolume) -> None:
    cli("full", "-r", repo, f"/dev/{thin.vg}x/data").assert_one_line_error(3, "no such file or device")
    cli("full", "-r", repo, thin.loop, "--provider", "lvmthin").assert_one_line_error(
        2, "an LVM thin volume is named /dev/VG/LV")
    sh("lvcreate", "-q", "-L", "8M", "-n", "thick", thin.vg)  # a plain LV: no pool to ask
    cli("full", "-r", repo, f"/dev/{thin.vg}/thick", "--provider", "lvmthin").assert_one_line_error(
        2, "is not an LVM thin volume")
    cli("full", "-r", repo, thin.path, "--freeze", "/mnt").assert_one_line_error(2, "--freeze is not for LVM")
    # A pool out of space: LVM refuses a new thin volume, so the backup cannot take its snapshot.
    sh("lvcreate", "-q", "--type", "thin-pool", "-L", "8M", "--chunksize", "64k", "-n", "small", thin.vg)
    sh("lvcreate", "-q", "-V", "32M", "-T", f"{thin.vg}/small", "-n", "crowded")
    sh("lvchange", "-q", "--errorwhenfull", "y", f"{thin.vg}/small")
    crowded = f"/dev/{thin.vg}/crowded"
    subprocess.run(["dd", "if=/dev/urandom", f"of={crowded}", "bs=1M", "count=12", "oflag=direct", "status=none"],
                   capture_output=True)  # ends in "No space left on device"
    cli("full", "-r", repo, crowded).assert_one_line_error(6, f"cannot snapshot {thin.vg}/crowded", "thin pool")
    assert thin.ours() == [] and cli("list", "-r", repo, "--json").json["backups"] == []  # nothing left behind
