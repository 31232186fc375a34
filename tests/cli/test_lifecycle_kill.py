"""SIGKILL of forget, synthesize and prune at every pause point and at random moments: afterwards verify
passes, every backup not being forgotten restores exactly, and running the command again finishes the job."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cbtbackup.engine import TrackedVolume
from tests.conftest import PASSPHRASE, RunCli, stored_manifests

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes], list[str]]:
    """A repository with a chain of five backups, another chain, and 600 leftover chunks to prune."""
    from cbtbackup.cli import main

    os.environ.setdefault("CBTBACKUP_PASSWORD", PASSPHRASE)  # module-wide: made before the per-test setting
    root = tmp_path_factory.mktemp("seed")
    repo, image = root / "repo", root / "disk.img"
    image.write_bytes(os.urandom(16 * MiB))

    def run(*a: object) -> int:
        return main([str(x) for x in a])

    assert run("init", "-r", repo, "--chunk-size", "64KiB") == 0
    assert run("track", image) == 0
    points: dict[str, bytes] = {}
    order = []
    for i in range(5):
        if i:
            with TrackedVolume.open(image) as vol:
                vol.write(i * 3 * MiB, os.urandom(2 * MiB))
        assert run("full" if i == 0 else "incr", "-r", repo, image) == 0
        newest = list(stored_manifests(repo))[-1]
        points[newest] = image.read_bytes()
        order.append(newest)
    other = root / "other.img"
    other.write_bytes(os.urandom(2 * MiB))
    assert run("full", "-r", repo, other, "--provider", "scan", "--name", "other") == 0
    points[next(iter(stored_manifests(repo, "other")))] = other.read_bytes()
    for _ in range(600):
        digest = os.urandom(32).hex()
        path = repo / "chunks" / digest[:2] / digest
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"left by a killed backup")
    return repo, points, order


CASES = (
    [("forget", p, "middle") for p in ("folded", "removed", "none", "none")]
    + [("forget", p, "full") for p in ("folded", "removed", "none")]
    + [("synthesize", p, "newest") for p in ("locked", "written", "none")]
    + [("prune", p, "") for p in ("marked", "locked", "deleting", "none", "none", "none")]
    + [("forget", "none", "newest"), ("prune", "deleting", ""), ("forget", "folded", "newest")]
    + [("synthesize", "none", "middle"), ("prune", "none", ""), ("forget", "none", "full")]
)


@pytest.mark.parametrize(("op", "point", "which"), CASES)
def test_killed_then_rerun(
    cli: RunCli, tmp_path: Path, seeded: tuple[Path, dict[str, bytes], list[str]], op: str, point: str, which: str
) -> None:
    source, points, order = seeded
    repo = tmp_path / "repo"
    shutil.copytree(source, repo)
    target = {"middle": order[2], "full": order[0], "newest": order[-1], "": ""}[which]
    args = [target] if target else []
    child = subprocess.Popen([sys.executable, "-m", "tests.cli.kill_driver", str(repo), op, point, *args],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "started"
    if point == "none":
        time.sleep(random.uniform(0, 0.08))
        child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode in (-signal.SIGKILL, 0)

    def check(forgotten: set[str]) -> None:
        listed = {b["id"]: b for b in cli("list", "-r", repo, "--json").json["backups"]}
        assert set(points) - forgotten <= set(listed), "a backup that was not forgotten went missing"
        verify = cli("verify", "-r", repo)
        assert verify.code == 0, verify.err
        for backup_id, row in listed.items():
            expected = points[row.get("synthesized_from") or backup_id]  # a synthetic full: its original's bytes
            out = tmp_path / "r.img"
            assert cli("restore", "-r", repo, backup_id, out).code == 0
            assert out.read_bytes() == expected, f"{backup_id} after a kill during {op} at {point}"
            out.unlink()

    forgotten = {target} if op == "forget" else set()
    check(forgotten)
    # Run it again: it finishes (stale locks of the killed process are taken over).
    if op == "forget":
        again = cli("forget", "-r", repo, target) if target in {b["id"] for b in cli(
            "list", "-r", repo, "--json").json["backups"]} else None
        assert again is None or again.code == 0, again.err
    elif op == "prune":
        again = cli("prune", "-r", repo, "--json")
        assert again.code == 0 and again.json["chunks_unused"] >= 0, again.err
        assert cli("prune", "-r", repo, "--json").json["chunks_unused"] == 0
    else:
        again = cli("synthesize", "-r", repo, target)
        assert again.code == 0, again.err
    check(forgotten)
    assert target not in {b["id"] for b in cli("list", "-r", repo, "--json").json["backups"]} or op != "forget"
