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
from tests.attach.conftest import Attached, wait_gone
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



def _tracked(cli: RunCli, tmp_path: Path, name: str) -> Attached:
    image = tmp_path / f"{name}.img"
    with open(image, "wb") as f:
        f.truncate(32 << 20)
    assert cli("track", image).code == 0
    (tmp_path / name).mkdir()
    return Attached(cli, image, tmp_path / name)


def test_a_daemon_never_detaches_a_loop_device_that_is_no_longer_its_own(cli: RunCli, tmp_path: Path) -> None:
    """Someone detaches a daemon's loop device by hand and a second attach takes the freed name; when the first
    daemon then ends, the second volume keeps its device."""
    first, second = _tracked(cli, tmp_path, "a"), _tracked(cli, tmp_path, "b")
    try:
        first_record = first.attach()
        subprocess.run(["losetup", "-d", first.loop], check=True)
        second.attach()
        assert second.loop == first.loop, "the freed loop device name was not reused (the machine took it)"
        assert cli("detach", first.mountdir).code == 0
        wait_gone(first_record.pid)
        assert system_tools.loop_backing_file(second.loop) == second.mountdir / "volume", \
            "the first daemon's teardown detached the second volume's loop device"
        with open(second.loop, "r+b") as dev:
            dev.seek(11 << 20)
            dev.write(b"y" * 4096)
    finally:
        first.cleanup()
        second.cleanup()
