"""Tracking across a reboot: the boot unit's `track --reattach-all` attaches again what was attached.

A "reboot" here is what one does to an attached volume: every daemon stops (SIGTERM as at a shutdown, or
SIGKILL as in a crash), the FUSE mount and the loop device go, the runtime mount directory is emptied —
then the boot unit's command runs. After a clean stop the next incremental uses CBT; after a kill it
scans, saying why; both restore exactly."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cbtbackup.engine.attach import system_tools
from cbtbackup.engine.attach.client import pid_alive
from cbtbackup.engine.attach.record import AttachRecord
from tests.attach.conftest import Attached, assert_restores, back_up, write_direct
from tests.conftest import RunCli

MiB = 1 << 20
UNIT = Path(__file__).parents[2] / "examples" / "systemd" / "cbtbackup-attach.service"


@pytest.fixture
def registry(attach_registry: Path) -> Path:
    return attach_registry


def boot_command() -> list[str]:
    """The unit's ExecStart, without the program: what the tests run is what the unit runs."""
    line = next(line for line in UNIT.read_text().splitlines() if line.startswith("ExecStart="))
    program, *args = shlex.split(line.removeprefix("ExecStart="))
    assert program.endswith("/cbtbackup")
    return args


def reboot(vol: Attached, kill: bool) -> None:
    """Stop the daemon as a shutdown (SIGTERM) or a crash (SIGKILL) would, and lose what a reboot loses."""
    assert vol.record is not None
    os.kill(vol.record.pid, signal.SIGKILL if kill else signal.SIGTERM)
    deadline = time.monotonic() + 30
    while pid_alive(vol.record.pid):
        assert time.monotonic() < deadline, "the daemon did not stop"
        time.sleep(0.05)
    for loop in system_tools.loops_backed_by(vol.mountdir / "volume"):
        subprocess.run(["losetup", "-d", loop], capture_output=True)
    if system_tools.is_mount_point(vol.mountdir):
        subprocess.run(["umount", "-l", str(vol.mountdir)], check=True)
    vol.mountdir.rmdir()  # a runtime folder: gone after a reboot
    vol.record = None


def reattach(cli: RunCli, vol: Attached) -> dict[str, object]:
    result = cli(*boot_command(), "--json")
    assert result.code == 0, result.err
    [outcome] = result.json["images"]
    assert (outcome["image"], outcome["state"], outcome["mountdir"]) == (str(vol.image), "attached",
                                                                         str(vol.mountdir))
    note_daemon(cli, vol)
    return dict(outcome)


def note_daemon(cli: RunCli, vol: Attached) -> None:
    """Point the test's handle at the daemon the boot command started (for its loop device and cleanup)."""
    status = cli("status", vol.image, "--json").json
    assert status["attached"], status
    vol.record = AttachRecord(status["pid"], str(vol.image), "", status["mountdir"], status["loop"])


def test_after_a_clean_shutdown_cbt_goes_on_and_after_a_crash_it_scans(
    cli: RunCli, attached_image: Attached, tmp_path: Path
) -> None:
    vol = attached_image
    vol.attach()
    repo = tmp_path / "repo"
    assert cli("init", "-r", repo, "--encryption", "none").code == 0
    taken: dict[str, bytes] = {}
    write_direct(vol.loop, 3, os.urandom(MiB))
    back_up(cli, repo, "full", vol.loop, taken)

    reboot(vol, kill=False)
    reattach(cli, vol)
    again = cli(*boot_command())  # a second run attaches nothing twice
    assert again.code == 0
    assert again.out.strip() == f"{vol.image}: already attached as {vol.mountdir}/volume and {vol.loop}"
    write_direct(vol.loop, 20, os.urandom(MiB))
    result = back_up(cli, repo, "incr", vol.loop, taken)
    assert result["method"] == "cbt", result["notes"]
    assert result["bytes_scanned"] == MiB  # exactly the write since the full

    reboot(vol, kill=True)
    outcome = reattach(cli, vol)
    assert "not closed cleanly" in str(outcome["generation_reason"])  # the tracker saw the crash at the open
    write_direct(vol.loop, 40, os.urandom(MiB))
    result = back_up(cli, repo, "incr", vol.loop, taken)
    assert result["method"] == "scan"
    assert any(n.startswith("scan incremental: ") and "not closed cleanly" in n for n in result["notes"]), \
        result["notes"]
    assert_restores(cli, repo, taken, tmp_path)


def test_a_detach_on_purpose_is_not_attached_again(cli: RunCli, attached_image: Attached, registry: Path) -> None:
    vol = attached_image
    vol.attach()
    assert len(list(registry.glob("*.json"))) == 1
    assert cli("detach", vol.mountdir).code == 0
    vol.record = None
    assert list(registry.glob("*.json")) == []
    result = cli(*boot_command(), "--json")
    assert result.code == 0 and result.json["images"] == []
    assert cli(*boot_command()).out.strip() == "no image to re-attach"


def test_an_image_that_is_gone_fails_alone_and_says_so(
    cli: RunCli, attached_image: Attached, registry: Path, tmp_path: Path
) -> None:
    vol = attached_image
    vol.attach()
    reboot(vol, kill=False)
    gone = tmp_path / "gone.img"
    (registry / "0123456789abcdef.json").write_text(
        f'{{"image": "{gone}", "mountdir": "{tmp_path / "m2"}", "loop": false, "state_dir": null}}')
    (registry / "fedcba9876543210.json").write_text("not json")
    result = cli(*boot_command())
    assert result.code == 1
    assert f"{vol.image}: attached as {vol.mountdir}/volume" in result.out  # the other image still came back
    lines = result.err.strip().splitlines()
    assert lines[-1] == "cbtbackup: error: 2 of 3 recorded images not re-attached"
    assert any(f"{gone}: not re-attached: no such file" in line for line in lines)
    assert any("fedcba9876543210.json: unreadable" in line for line in lines)
    note_daemon(cli, vol)
    as_json = cli(*boot_command(), "--json")
    assert as_json.code == 1 and as_json.json["exit_code"] == 1
    states = {i["image"]: i["state"] for i in as_json.json["images"]}
    assert states == {str(gone): "failed", str(vol.image): "already attached"}
    assert len(as_json.json["unreadable"]) == 1


def test_reattach_all_takes_nothing_else(cli: RunCli, tmp_path: Path) -> None:
    cli("track", "--reattach-all", tmp_path / "x.img").assert_one_line_error(2, "--reattach-all takes no IMAGE")
    cli("track").assert_one_line_error(2, "say which IMAGE to track")
