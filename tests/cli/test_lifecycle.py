"""forget, synthesize, prune, stats, unlock and the locks, through the command line on a local repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cbtbackup.pipeline.backup import BackupOptions, run_backup
from cbtbackup.repo.location import StoreOptions, open_repository
from tests.cli.lifecycle_stories import forget_and_synthesize_story, write
from tests.conftest import PASSPHRASE, CliResult, MakeImage, RunCli

MiB = 1 << 20


def test_forget_and_synthesize_keep_every_other_backup_exact(
    cli: RunCli, make_image: MakeImage, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    forget_and_synthesize_story(cli, ("-r", str(repo)), make_image(48 * MiB), tmp_path)


def test_forget_by_policy_says_which_rule_keeps_what(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    a, b = make_image(MiB), make_image(MiB)
    ids = {a: [], b: []}  # type: dict[Path, list[str]]
    for _ in range(4):
        for image in (a, b):
            image.write_bytes(os.urandom(MiB))  # each backup holds its own chunk
            ids[image].append(cli("full", "-r", repo, image, "--provider", "scan", "--json").json["id"])
    dry = cli("forget", "-r", repo, "--keep-last", "2", "--dry-run", "--json")
    assert dry.code == 0
    assert sorted(r["id"] for r in dry.json["removed"]) == sorted(ids[a][:2] + ids[b][:2])  # per chain
    assert all(k["reasons"] == ["last"] for k in dry.json["kept"])
    assert len(cli("list", "-r", repo, "--json").json["backups"]) == 8  # a dry run changes nothing
    human = cli("forget", "-r", repo, "--keep-last", "1", "--keep-within", "1d")
    assert human.code == 0 and "(last, within)" in human.out and "within" in human.out
    assert len(cli("list", "-r", repo, "--json").json["backups"]) == 8  # all within a day of the newest
    done = cli("forget", "-r", repo, "--keep-last", "1", "--prune", "--json")
    assert done.code == 0 and len(done.json["removed"]) == 6 and done.json["prune"]["chunks_deleted"] == 6
    for image in (a, b):
        restored = tmp_path / "r.img"
        assert cli("restore", "-r", repo, ids[image][-1], restored).code == 0
        assert restored.read_bytes() == image.read_bytes()
        restored.unlink()
    cli("forget", "-r", repo).assert_one_line_error(2, "say which backups")
    cli("forget", "-r", repo, ids[a][-1], "--keep-last", "1").assert_one_line_error(2, "not both")


def test_stats_and_list_sizes(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    cli("init", "-r", repo, "--compression", "none")
    image = make_image(4 * MiB)
    cli("full", "-r", repo, image, "--provider", "scan")
    copy = tmp_path / "copy.img"
    copy.write_bytes(image.read_bytes())
    cli("full", "-r", repo, copy, "--provider", "scan")
    with open(copy, "r+b") as f:
        f.write(os.urandom(MiB))
    cli("incr", "-r", repo, copy, "--provider", "scan")
    stats = cli("stats", "-r", repo, "--json").json
    assert stats["total"]["backups"] == 3 and stats["total"]["logical_bytes"] == 12 * MiB
    assert 5 * MiB <= stats["total"]["stored_bytes"] < 5 * MiB + 4096  # 4 shared chunks + 1 new
    assert stats["total"]["dedup_ratio"] > 2
    assert [c["backups"] for c in stats["chains"]] == [2, 1] or [c["backups"] for c in stats["chains"]] == [1, 2]
    rows = cli("list", "-r", repo, "--json").json["backups"]
    alone = {r["id"]: r["bytes_alone"] for r in rows}
    incr = next(r for r in rows if r["kind"] == "incr")
    assert alone[incr["id"]] > MiB  # its new first MiB is its own
    assert sum(alone.values()) < 2 * MiB + 8192  # everything else is shared
    assert "ALONE" in cli("list", "-r", repo, "--long").out and "DEDUP" in cli("stats", "-r", repo).out
    # One chain's list leaves ALONE out (it would read every chain's maps) unless asked for it.
    chain = incr["name"]
    one = cli("list", "-r", repo, "--name", chain, "--json").json["backups"]
    assert len(one) == 2 and all(r["bytes_alone"] is None for r in one)
    asked = cli("list", "-r", repo, "--name", chain, "--alone", "--json").json["backups"]
    assert {r["id"]: r["bytes_alone"] for r in asked} == {r["id"]: alone[r["id"]] for r in one}


def test_two_incrementals_of_one_chain_exclude_each_other(
    cli: RunCli, make_image: MakeImage, tmp_path: Path
) -> None:
    """The second incremental starts while the first holds its snapshot: it fails naming the holder, and a
    backup of another chain goes on at the same moment."""
    repo_path = tmp_path / "repo"
    cli("init", "-r", repo_path)
    image, other = make_image(8 * MiB), make_image(4 * MiB)
    cli("track", image)
    cli("full", "-r", repo_path, image)
    cli("full", "-r", repo_path, other, "--provider", "scan")
    write(image, 0, MiB)
    meanwhile: dict[str, CliResult] = {}

    def at(point: str) -> None:
        if point == "snapshot-taken":
            meanwhile["same"] = cli("incr", "-r", repo_path, image, "--state-dir", tmp_path / "elsewhere")
            meanwhile["other"] = cli("incr", "-r", repo_path, other, "--provider", "scan", "--json")

    repo = open_repository(str(repo_path), StoreOptions(None), PASSPHRASE)
    first = run_backup(repo, BackupOptions(str(image), "incr"), hook=at)
    assert first.manifest.method == "cbt"
    meanwhile["same"].assert_one_line_error(4, "locked by incr backup of", f"pid {os.getpid()}")
    assert meanwhile["other"].code == 0, meanwhile["other"].err  # another chain: not in the way
    backups = cli("list", "-r", repo_path, "--json").json["backups"]
    assert len([b for b in backups if b["kind"] == "incr" and b["source"] == str(image)]) == 1  # no fork
    assert list((repo_path / "locks").glob("*")) == []


def hold_lock(repo: Path, command: str, exclusive: tuple[str, ...], shared: tuple[str, ...],
              seconds: float) -> subprocess.Popen[str]:
    """Another process that holds a lock for a while (or until killed)."""
    child = subprocess.Popen([sys.executable, "-c", "import os, sys, time\n"
                              "from cbtbackup.repo.location import open_repository, StoreOptions\n"
                              "r = open_repository(sys.argv[1], StoreOptions(None), os.environ['CBTBACKUP_PASSWORD'])\n"
                              "lock = r.locks.acquire(sys.argv[2], exclusive=tuple(sys.argv[3].split()), "
                              "shared=tuple(sys.argv[4].split()))\n"
                              "print('held', flush=True); time.sleep(float(sys.argv[5])); lock.release()",
                              str(repo), command, " ".join(exclusive), " ".join(shared), str(seconds)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_a_second_backup_waits_for_the_lock(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    image = make_image(MiB)
    name = cli("full", "-r", repo, image, "--provider", "scan", "--json").json["name"]
    holder = hold_lock(repo, "incr backup of it", (f"chain:{name}",), ("repo",), 1.5)
    cli("incr", "-r", repo, image, "--provider", "scan").assert_one_line_error(4, "locked by incr backup of it")
    waited = cli("incr", "-r", repo, image, "--provider", "scan", "--wait-lock", "1m")
    assert waited.code == 0 and "waiting for the lock held by incr backup of it" in waited.err
    holder.wait()


def test_stale_locks_are_taken_over_and_unlock_clears_them(
    cli: RunCli, make_image: MakeImage, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    cli("init", "-r", repo, "--encryption", "none")  # the test writes lock objects of other hosts by hand
    image = make_image(MiB)
    cli("full", "-r", repo, image, "--provider", "scan")
    child = hold_lock(repo, "backup of x", ("chain:x",), ("repo",), 60)  # then killed with SIGKILL
    busy = cli("prune", "-r", repo)
    busy.assert_one_line_error(4, "locked by backup of x", f"pid {child.pid}")
    child.kill()
    child.wait()
    taken = cli("prune", "-r", repo)
    assert taken.code == 0 and "removed a stale lock of backup of x" in taken.err
    # unlock: a stale one, and --remove-all for a live one of another host.
    (repo / "locks").mkdir(exist_ok=True)
    (repo / "locks" / "deadbeef").write_text(json.dumps({
        "id": "deadbeef", "host": "elsewhere", "boot": "", "pid": 1, "pid_start": 0, "command": "backup of y",
        "created": time.time() - 7200, "refreshed": time.time() - 7200, "ttl": 1800, "shared": ["repo"],
        "exclusive": ["chain:y"]}))
    (repo / "locks" / "cafe").write_text(json.dumps({
        "id": "cafe", "host": "elsewhere", "boot": "", "pid": 1, "pid_start": 0, "command": "prune",
        "created": time.time(), "refreshed": time.time(), "ttl": 1800, "shared": [], "exclusive": ["repo"]}))
    unlocked = cli("unlock", "-r", repo, "--json")
    assert [r["id"] for r in unlocked.json["removed"]] == ["deadbeef"]
    cli("full", "-r", repo, image, "--provider", "scan").assert_one_line_error(4, "locked by prune")
    assert cli("unlock", "-r", repo, "--remove-all").code == 0
    assert cli("full", "-r", repo, image, "--provider", "scan").code == 0


def test_synthetic_full_every(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    image = make_image(8 * MiB)
    cli("track", image)
    cli("full", "-r", repo, image)
    made = []
    for i in range(5):
        write(image, i * MiB, 4096)
        result = cli("incr", "-r", repo, image, "--synthetic-full-every", "2", "--json").json
        made.append(result["synthetic_full"])
        assert result["method"] == "cbt"
    assert made == [None, made[1], None, made[3], None] and made[1] and made[3]
    rows = {b["id"]: b for b in cli("list", "-r", repo, "--json").json["backups"]}
    assert rows[made[3]]["kind"] == "full"
    newest = max(rows.values(), key=lambda b: b["created"])
    assert newest["parent"] == made[3]  # the chain stays short
    out = tmp_path / "out.img"
    assert cli("restore", "-r", repo, newest["id"], out).code == 0 and out.read_bytes() == image.read_bytes()
