"""Misuse of attach and detach: one clear line each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
