"""On a terminal, long work shows a progress bar on stderr; --json keeps stdout machine-readable."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

from tests.conftest import MakeImage

MiB = 1 << 20


def test_progress_bar_on_a_terminal(make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image(64 * MiB)
    repo = tmp_path / "repo"
    subprocess.run([sys.executable, "-m", "cbtbackup", "init", "-r", str(repo)], check=True, capture_output=True)
    leader, follower = pty.openpty()
    drawn = bytearray()

    def drain() -> None:  # read as the bar is drawn: a pty holds only a few KiB
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                return
            if not chunk:
                return
            drawn.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "cbtbackup", "full", "-r", str(repo), str(image), "--json"],
            stdout=subprocess.PIPE, stderr=follower, timeout=120,
        )
    finally:
        os.close(follower)
        reader.join(10)
        os.close(leader)
    assert proc.returncode == 0
    assert b"full " in drawn and b"disk1.img-" in drawn and b"64.0M" in drawn  # tqdm drew the bar, sized in bytes
    assert json.loads(proc.stdout.decode().strip().splitlines()[-1])["kind"] == "full"


def test_no_bar_when_stderr_is_not_a_terminal(make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image(8 * MiB)
    repo = tmp_path / "repo"
    subprocess.run([sys.executable, "-m", "cbtbackup", "init", "-r", str(repo)], check=True)
    proc = subprocess.run([sys.executable, "-m", "cbtbackup", "full", "-r", str(repo), str(image)],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith("backup ")
