"""Writes that bypass an attached volume: into the backing image file while it is served, and onto a
tracked block device outside any attach. Every restore equals the volume as it was at its take."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.attach.conftest import Attached, assert_restores, back_up, write_direct
from tests.conftest import RunCli

MiB = 1 << 20


def test_a_write_into_the_backing_file_of_an_attached_image(
    cli: RunCli, attached_image: Attached, tmp_path: Path
) -> None:
    vol = attached_image
    vol.attach()
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    taken: dict[str, bytes] = {}

    def backup(kind: str, method: str) -> dict[str, Any]:
        result = back_up(cli, repo, kind, vol.loop, taken)
        assert result["method"] == method, result["notes"]
        return result

    write_direct(vol.loop, 3, os.urandom(MiB))
    backup("full", "full")
    write_direct(vol.loop, 7, os.urandom(MiB))
    backup("incr", "cbt")
    # Around the daemon: straight into the image file it serves, while it serves it.
    subprocess.run(["dd", f"of={vol.image}", "bs=4096", "seek=5000", "count=3", "conv=notrunc", "status=none"],
                   input=os.urandom(3 * 4096), check=True)
    scanned = backup("incr", "scan")
    assert any("another process opened the image for writing" in str(n) for n in scanned["notes"]), scanned
    write_direct(vol.loop, 11, os.urandom(MiB))
    backup("incr", "cbt")  # watched again from the scan's take on

    assert cli("detach", vol.mountdir).code == 0
    assert_restores(cli, repo, taken, tmp_path)


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    backing = tmp_path / "backing.img"
    with open(backing, "wb") as f:
        f.truncate(64 * MiB)
    dev = subprocess.run(["losetup", "--find", "--show", str(backing)], check=True, capture_output=True,
                         text=True).stdout.strip()
    yield dev
    subprocess.run(["losetup", "-d", dev], capture_output=True)


def test_a_block_device_is_trusted_only_within_one_attach(
    cli: RunCli, loop_device: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    tracked = cli("track", loop_device, "--state-dir", state, "--json")
    assert tracked.code == 0 and "attach" in str(tracked.json["sees"])
    mnt = tmp_path / "served"
    mnt.mkdir()
    vol = Attached(cli, Path(loop_device), mnt, state)
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    taken: dict[str, bytes] = {}
    try:
        vol.attach()

        def backup(kind: str) -> dict[str, Any]:
            return back_up(cli, repo, kind, vol.loop, taken)

        assert backup("full")["method"] == "full"
        write_direct(vol.loop, 9, os.urandom(MiB))
        assert backup("incr")["method"] == "cbt"  # the daemon held the device since the full
        assert cli("detach", mnt).code == 0
        write_direct(loop_device, 20, os.urandom(MiB))  # raw, while nothing holds it
        vol.attach()
        write_direct(vol.loop, 30, os.urandom(MiB))
        again = backup("incr")
        assert again["method"] == "scan" and any("block device" in str(n) for n in again["notes"]), again
        assert cli("detach", mnt).code == 0
    finally:
        vol.cleanup()
    assert_restores(cli, repo, taken, tmp_path)


def test_a_clean_detach_keeps_the_tracking_for_the_next_attach(
    cli: RunCli, attached_image: Attached, tmp_path: Path
) -> None:
    """What survives a stop of the daemon (as at a shutdown): detached cleanly, attached again, the next
    incremental still uses CBT, exact; a write while nothing held the image makes it scan instead."""
    vol = attached_image
    vol.attach()
    repo = tmp_path / "repo"
    assert cli("init", "-r", repo, "--encryption", "none").code == 0
    taken: dict[str, bytes] = {}

    def backup(kind: str, method: str) -> None:
        result = back_up(cli, repo, kind, vol.loop, taken)
        assert result["method"] == method, result

    write_direct(vol.loop, 2, os.urandom(MiB))
    backup("full", "full")
    assert cli("detach", vol.mountdir).code == 0
    vol.attach()
    write_direct(vol.loop, 9, os.urandom(MiB))
    backup("incr", "cbt")
    assert cli("detach", vol.mountdir).code == 0
    with open(vol.image, "r+b") as f:  # while detached: around the tracker
        f.seek(30 * MiB)
        f.write(os.urandom(4096))
    vol.attach()
    backup("incr", "scan")
    assert cli("detach", vol.mountdir).code == 0
    assert_restores(cli, repo, taken, tmp_path)
