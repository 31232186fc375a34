"""What restic and borg users expect day to day: list filters and a table that fits 100 columns, -q and
-v anywhere on the line, a log file, status lines every N seconds where stderr is no terminal, and a full's
summary that says what it did."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import MakeImage, RunCli

MiB = 1 << 20


@pytest.fixture
def repo(cli: RunCli, tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    assert cli("init", "-r", path, "--encryption", "none").code == 0
    return path


def test_list_filters_and_a_compact_table(cli: RunCli, repo: Path, make_image: MakeImage) -> None:
    a, b = make_image(MiB, name="a-disk-with-a-rather-long-name-that-makes-a-long-chain-name.img"), make_image(MiB)
    for image in (a, b):
        assert cli("full", "-r", repo, image).code == 0
        assert cli("incr", "-r", repo, image, "--provider", "scan").code == 0
        assert cli("incr", "-r", repo, image, "--provider", "scan").code == 0
    everything = cli("list", "-r", repo, "--json").json["backups"]
    assert len(everything) == 6
    table = cli("list", "-r", repo).out.splitlines()
    assert len(table) == 7 and all(len(line) <= 100 for line in table), table
    assert all(b["id"] in cli("list", "-r", repo).out for b in everything)

    last = cli("list", "-r", repo, "--last", "1", "--json").json["backups"]
    newest = {}
    for b in everything:
        newest[b["name"]] = b["id"]  # oldest first within a chain: the last one stays
    assert sorted(b["id"] for b in last) == sorted(newest.values())
    chain = everything[0]["name"]
    assert {b["name"] for b in cli("list", "-r", repo, "--chain", chain, "--json").json["backups"]} == {chain}
    assert len(cli("list", "-r", repo, "--host", os.uname().nodename, "--json").json["backups"]) == 6
    assert cli("list", "-r", repo, "--host", "no-such-host", "--json").json["backups"] == []
    cli("list", "-r", repo, "--last", "0").assert_one_line_error(2, "--last")
    long = cli("list", "-r", repo, "--long").out
    assert "ALONE" in long and "HOST:SOURCE" in long and str(a) in long


def test_a_full_summary_says_full_read_and_stored(cli: RunCli, repo: Path, make_image: MakeImage) -> None:
    image = make_image(2 * MiB)
    out = cli("full", "-r", repo, image).out
    assert "): full, 2.0 MiB read, " in out and " stored " in out and "full by full" not in out
    assert "changed" not in out
    assert "): incr by scan, " in cli("incr", "-r", repo, image, "--provider", "scan").out


def test_quiet_and_verbose_anywhere_on_the_line(cli: RunCli, repo: Path, make_image: MakeImage) -> None:
    image = make_image(MiB)
    quiet = cli("full", "-r", repo, image, "-q")
    assert quiet.code == 0 and quiet.out == "" and quiet.err == ""
    assert cli("-q", "incr", "-r", repo, image, "--provider", "scan", "--json").json["method"] == "scan"
    verbose = cli("incr", "-r", repo, image, "--provider", "scan", "-v")
    assert verbose.code == 0
    steps = verbose.err.splitlines()
    assert any("through the scan provider" in s for s in steps) and any("committed" in s for s in steps), steps
    cli("list", "-r", repo, "-q", "-v").assert_one_line_error(2, "contradict")
    # A quiet backup still says why it scanned: the one line the first rule asks for.
    tracked = make_image(MiB)
    assert cli("track", tracked).code == 0 and cli("full", "-r", repo, tracked, "-q").code == 0
    with open(tracked, "r+b") as f:  # a write around the tracker
        f.write(b"x" * 4096)
    reason = cli("incr", "-r", repo, tracked, "-q")
    assert reason.code == 0 and reason.out == ""
    assert "scan incremental:" in reason.err, reason.err


def test_a_log_file_keeps_every_line_with_a_time(cli: RunCli, repo: Path, make_image: MakeImage,
                                                 tmp_path: Path) -> None:
    image = make_image(MiB)
    log = tmp_path / "cbtbackup.log"
    assert cli("full", "-r", repo, image, "--log-file", log).code == 0
    cli("incr", "-r", repo, tmp_path / "nothing-here.img", "--log-file", log).assert_one_line_error(3)
    lines = log.read_text().splitlines()
    assert any("): full, " in line for line in lines), lines
    assert any("through the userspace provider" in line or "provider" in line for line in lines), lines
    assert any("error:" in line and "(exit 3)" in line for line in lines), lines
    assert all(line[:4].isdigit() for line in lines)  # each starts with its time
    cli("list", "-r", repo, "--log-file", tmp_path / "no" / "dir" / "x.log").assert_one_line_error(3, "log file")


def test_status_lines_every_interval_where_stderr_is_no_terminal(repo: Path, tmp_path: Path) -> None:
    image = tmp_path / "big.img"
    image.write_bytes(os.urandom(768 * MiB))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "cbtbackup", "full", "-r", str(repo), str(image),
                           "--progress-interval", "0.2"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    status = [line for line in done.stderr.splitlines() if " of 768.0 MiB (" in line]
    assert status, done.stderr
    assert len(status) <= took / 0.2 + 1  # one per interval at most
    shares = [int(line.split("(")[1].split(" %")[0]) for line in status]
    assert shares == sorted(shares)  # advancing
    quiet = subprocess.run([sys.executable, "-m", "cbtbackup", "incr", "-r", str(repo), str(image),
                            "--provider", "scan"], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert quiet.returncode == 0 and " of 768.0 MiB (" not in quiet.stderr  # not asked: no status lines


def test_cache_shows_and_cleans_up_unused_folders(cli: RunCli, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cache"
    monkeypatch.setenv("CBTBACKUP_CACHE_DIR", str(root))
    for name, days in (("old-repository", 40), ("recent-repository", 2)):
        (root / name / "manifests").mkdir(parents=True)
        (root / name / "manifests" / "backups%x").write_bytes(b"v\n" + bytes(1000))
        when = time.time() - days * 86400
        os.utime(root / name, (when, when))
    (root / "not-ours").mkdir()  # no manifests folder: never touched
    shown = cli("cache", "--json")
    assert shown.code == 0 and shown.json["root"] == str(root)
    assert sorted(r["id"] for r in shown.json["repositories"]) == ["old-repository", "recent-repository"]
    cleaned = cli("cache", "--cleanup", "--json")
    assert [r["id"] for r in cleaned.json["removed"]] == ["old-repository"]
    assert sorted(p.name for p in root.iterdir()) == ["not-ours", "recent-repository"]
    assert "removed 1 folder(s) unused for 1d" in cli("cache", "--cleanup", "--max-age", "1d").out
    assert sorted(p.name for p in root.iterdir()) == ["not-ours"]
    cli("cache", "--cleanup", "--max-age", "soon").assert_one_line_error(2, "not an age")
