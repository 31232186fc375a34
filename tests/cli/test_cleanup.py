"""The snapshot is destroyed and the volume released on every path: failure and Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from cbtbackup.engine import TrackedVolume
from tests.conftest import MakeImage, RunCli

MiB = 1 << 20


def test_failed_backup_releases_the_volume(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image(4 * MiB)
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    cli("track", image)
    # Root ignores permission bits, so make the store fail for real: a file where a directory must go.
    (repo / "chunks").write_bytes(b"not a directory")
    cli("full", "-r", repo, image).assert_one_line_error(11, "chunks/", "Not a directory")
    with TrackedVolume.open(image) as vol:  # not locked, no snapshot left holding it
        assert vol.snapshot is None
        assert vol.cbt_info().changes_number == 1  # the failed backup's snapshot was taken, then destroyed
    assert cli("list", "-r", repo, "--json").json["backups"] == []


def test_ctrl_c_destroys_the_snapshot(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image(1024 * MiB)  # big enough that the backup is still reading when Ctrl-C lands
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    cli("track", image)
    # Ctrl-C as a terminal delivers it: a test run started in the background of a shell inherits SIGINT
    # ignored, and Python then leaves it ignored in the child too.
    child = subprocess.Popen([sys.executable, "-m", "cbtbackup", "full", "-r", str(repo), str(image)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 30
    while not list((repo / "chunks").glob("*/*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert err.strip() == "cbtbackup: error: interrupted"
    with TrackedVolume.open(image) as vol:
        assert vol.snapshot is None
    assert cli("list", "-r", repo, "--json").json["backups"] == []
    assert not list(image.parent.glob(f"{image.name}.cbt/*tmp*"))
