"""restore --force never overwrites something in use, whatever the flags: nothing is written."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cbtbackup.engine import TrackedVolume
from tests.conftest import MakeImage, RunCli

MiB = 1 << 20


@pytest.fixture
def backup(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> tuple[Path, str]:
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    image = make_image(8 * MiB)
    backup_id = cli("full", "-r", repo, image, "--provider", "scan", "--json").json["id"]
    return repo, backup_id


def loop(path: Path) -> str:
    return subprocess.run(["losetup", "--find", "--show", str(path)], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def mounted_loop(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    backing = tmp_path / "fs.img"
    with open(backing, "wb") as f:
        f.truncate(16 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(backing)], check=True)
    dev = loop(backing)
    where = tmp_path / "mnt"
    where.mkdir()
    subprocess.run(["mount", dev, str(where)], check=True)
    yield dev, backing
    subprocess.run(["umount", str(where)], check=True)
    subprocess.run(["losetup", "-d", dev], check=True)


def test_a_mounted_loop_device_is_refused(
    cli: RunCli, backup: tuple[Path, str], mounted_loop: tuple[str, Path]
) -> None:
    repo, backup_id = backup
    dev, backing = mounted_loop
    before = backing.read_bytes()
    cli("restore", "-r", repo, backup_id, dev, "--force").assert_one_line_error(4, dev, "mounted")
    assert backing.read_bytes() == before
    # The file behind it is in use too.
    cli("restore", "-r", repo, backup_id, backing, "--force").assert_one_line_error(4, "backs loop device", dev)
    assert backing.read_bytes() == before


def test_a_device_held_exclusively_is_refused(cli: RunCli, backup: tuple[Path, str], tmp_path: Path) -> None:
    repo, backup_id = backup
    backing = tmp_path / "dev.img"
    backing.write_bytes(b"\x55" * (8 * MiB))
    dev = loop(backing)
    try:
        holder = subprocess.Popen([sys.executable, "-c",
                                   "import os, sys; os.open(sys.argv[1], os.O_RDONLY | os.O_EXCL); "
                                   "print('held', flush=True); sys.stdin.read()", dev],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        cli("restore", "-r", repo, backup_id, dev, "--force").assert_one_line_error(4, "held by another program")
        holder.kill()
        holder.wait()
        subprocess.run(["losetup", "-d", dev], check=True)
        assert backing.read_bytes() == b"\x55" * (8 * MiB)
        dev = loop(backing)
        assert cli("restore", "-r", repo, backup_id, dev, "--force").code == 0  # free now: it works
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def test_a_file_open_elsewhere_or_held_by_a_tracker_is_refused(
    cli: RunCli, backup: tuple[Path, str], tmp_path: Path
) -> None:
    repo, backup_id = backup
    target = tmp_path / "target.img"
    target.write_bytes(b"\x77" * (8 * MiB))
    reader = subprocess.Popen(["sh", "-c", f"exec 3<{target}; echo open; read x"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert reader.stdout is not None and reader.stdout.readline().strip() == "open"
    cli("restore", "-r", repo, backup_id, target, "--force").assert_one_line_error(4, "open in another process")
    reader.kill()
    reader.wait()
    TrackedVolume.track(target).close()
    with TrackedVolume.open(target):  # as a running backup holds it
        cli("restore", "-r", repo, backup_id, target, "--force").assert_one_line_error(4, "running backup")
    assert target.read_bytes() == b"\x77" * (8 * MiB)
    assert cli("restore", "-r", repo, backup_id, target, "--force").code == 0
