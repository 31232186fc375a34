"""A backup killed with SIGKILL half-way leaves a valid repository, and the re-run stores no chunk twice."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import MakeImage, RunCli

MiB = 1 << 20


def stored_chunks(repo: Path) -> set[str]:
    return {p.name for p in (repo / "chunks").rglob("*") if p.is_file() and not p.name.startswith(".tmp-")}


def test_sigkill_mid_backup(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    small = make_image(3 * MiB, name="small.img")
    earlier = cli("full", "-r", repo, small, "--json").json["id"]
    before = stored_chunks(repo)

    big = make_image(384 * MiB, name="big.img")
    child = subprocess.Popen([sys.executable, "-m", "cbtbackup", "full", "-r", str(repo), str(big), "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(stored_chunks(repo) - before) < 40 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, "the backup finished before it could be killed"
    partial = stored_chunks(repo) - before
    assert 40 <= len(partial) < 384

    listing = cli("list", "-r", repo, "--json").json["backups"]
    assert [b["id"] for b in listing] == [earlier]  # the killed backup is not visible
    out = tmp_path / "small.out"
    assert cli("restore", "-r", repo, earlier, out).code == 0
    assert out.read_bytes() == small.read_bytes()
    assert cli("verify", "-r", repo).code == 0

    rerun = cli("full", "-r", repo, big, "--json")
    assert rerun.code == 0, rerun.err
    assert rerun.json["chunks_reused"] == len(partial)  # what the killed run stored is not stored again
    assert rerun.json["chunks_new"] == 384 - len(partial)
    assert len(stored_chunks(repo) - before) == 384
    restored = tmp_path / "big.out"
    assert cli("restore", "-r", repo, f"{rerun.json['name']}@latest", restored).code == 0
    assert restored.read_bytes() == big.read_bytes()
    names = [b["name"] for b in json.loads(cli("list", "-r", repo, "--json").out)["backups"]]
    assert sorted(names) == sorted({rerun.json["name"], listing[0]["name"]})
