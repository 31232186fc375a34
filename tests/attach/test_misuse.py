"""Misuse of attach and detach: one clear line each."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cbtbackup.engine import TrackedVolume
from cbtbackup.engine.attach import system_tools
from cbtbackup.engine.attach.client import pid_alive
from tests.attach.conftest import Attached
from tests.conftest import RunCli


def test_attaching_an_attached_image(cli: RunCli, attached_image: Attached, tmp_path: Path) -> None:
    record = attached_image.attach()
    other = tmp_path / "elsewhere"
    other.mkdir()
    cli("attach", attached_image.image, other).assert_one_line_error(2, "attached already", record.mountdir)
    status = cli("status", attached_image.image, "--json").json
    assert status["attached"] and status["loop"] == record.loop and status["pid"] == record.pid
    assert cli("detach", attached_image.mountdir).code == 0
    assert cli("status", attached_image.image, "--json").json["attached"] is False


def test_detaching_what_is_not_attached(cli: RunCli, tmp_path: Path) -> None:
    cli("detach", tmp_path).assert_one_line_error(3, "nothing is attached")


def test_mount_directory_that_does_not_exist(cli: RunCli, attached_image: Attached, tmp_path: Path) -> None:
    cli("attach", attached_image.image, tmp_path / "nope").assert_one_line_error(2, "does not exist")


def test_untracked_image(cli: RunCli, tmp_path: Path) -> None:
    image = tmp_path / "plain.img"
    image.write_bytes(bytes(1 << 20))
    cli("attach", image, tmp_path).assert_one_line_error(3, "not tracked")


def test_without_fuse(attached_image: Attached) -> None:
    """In a mount namespace where /dev/fuse is /dev/null, attach says FUSE is missing."""
    script = (f"mount --bind /dev/null /dev/fuse && exec {sys.executable} -m cbtbackup attach "
              f"{attached_image.image} {attached_image.mountdir}")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "cbtbackup: error: FUSE is not available: /dev/fuse is not the FUSE device"


def test_sigterm_tears_down_in_order(cli: RunCli, attached_image: Attached) -> None:
    record = attached_image.attach()
    loop = attached_image.loop
    before = cli("cbt", "info", loop, "--json")  # through the daemon, by loop device
    assert before.code == 0 and before.json["source"] == loop
    with open(loop, "r+b") as dev:
        dev.write(b"x" * 65536)
        dev.flush()
        os.fsync(dev.fileno())
    os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while pid_alive(record.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(record.pid)
    assert system_tools.loop_backing_file(loop) is None  # the loop device is gone
    assert not system_tools.is_mount_point(attached_image.mountdir)
    with TrackedVolume.open(attached_image.image) as vol:  # closed cleanly: same generation, write marked
        assert str(vol.cbt_info().generation_id) == before.json["generation_id"]
        assert vol.reset_reason == "tracking started"
        assert vol.cbt_live_map()[0] == 1
        assert vol.read(0, 4) == b"xxxx"
