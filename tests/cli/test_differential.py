"""Differential backups (``incr --since BACKUP|full``) of a tracked image: what they read, what they
build on, and that forget, prune and restore keep every backup's image while the chain is a tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cbtbackup.engine import TrackedVolume
from tests.conftest import MakeImage, RunCli

BLOCK = 64 << 10  # the tracking block
MiB = 1 << 20


def write_blocks(image: Path, blocks: list[int], tag: int) -> None:
    """Whole tracking blocks written through the engine, each with bytes no other write gives it."""
    with TrackedVolume.open(image) as vol:
        for block in blocks:
            vol.write(block * BLOCK, bytes([tag]) * 16 + os.urandom(BLOCK - 16))


@pytest.fixture
def tracked(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> tuple[Path, Path]:
    image = make_image(16 * MiB)
    repo = tmp_path / "repo"
    assert cli("init", "-r", repo, "--chunk-size", "256KiB", "--encryption", "none").code == 0
    assert cli("track", image).code == 0
    return image, repo


def backup(cli: RunCli, repo: Path, kind: str, image: Path, *args: object) -> dict[str, object]:
    result = cli(kind, "-r", repo, image, "--json", "--verify-unchanged", "0", *args) if kind == "incr" \
        else cli(kind, "-r", repo, image, "--json", *args)
    assert result.code == 0, result.err
    return result.json


def assert_restores(cli: RunCli, repo: Path, points: dict[str, bytes], where: Path) -> None:
    for backup_id, expected in points.items():
        target = where / f"restored-{backup_id}.img"
        target.unlink(missing_ok=True)
        assert cli("restore", "-r", repo, backup_id, target).code == 0
        assert target.read_bytes() == expected, f"backup {backup_id} restores other bytes"


def test_a_differential_reads_every_change_since_its_base_and_only_those(
    cli: RunCli, tracked: tuple[Path, Path], tmp_path: Path
) -> None:
    image, repo = tracked
    points: dict[str, bytes] = {}
    full = backup(cli, repo, "full", image)
    points[str(full["id"])] = image.read_bytes()
    write_blocks(image, [3, 4, 100], 1)
    first = backup(cli, repo, "incr", image)
    points[str(first["id"])] = image.read_bytes()
    write_blocks(image, [4, 200, 201], 2)
    second = backup(cli, repo, "incr", image)
    points[str(second["id"])] = image.read_bytes()
    assert (second["parent"], second["bytes_scanned"]) == (first["id"], 3 * BLOCK)

    write_blocks(image, [250], 3)
    diff = cli("incr", "-r", repo, image, "--since", "full", "--json", "--verify-unchanged", "0")
    assert diff.code == 0, diff.err
    assert diff.err.strip() == f"cbtbackup: differential: the changes since backup {full['id']}"
    d = diff.json
    # Blocks 3, 4, 100, 200, 201 and 250: everything written since the full, each once.
    assert (d["kind"], d["method"], d["parent"], d["bytes_scanned"]) == ("incr", "cbt", full["id"], 6 * BLOCK)
    points[str(d["id"])] = image.read_bytes()

    write_blocks(image, [7], 4)
    since_first = backup(cli, repo, "incr", image, "--since", str(first["id"])[:8])
    # Since the first incremental: 4, 200, 201 (second), 250 (the differential's) and 7.
    assert (since_first["parent"], since_first["method"], since_first["bytes_scanned"]) == \
        (first["id"], "cbt", 5 * BLOCK)
    points[str(since_first["id"])] = image.read_bytes()
    write_blocks(image, [9], 5)
    after = backup(cli, repo, "incr", image)  # a plain incremental continues from the newest backup
    assert (after["parent"], after["method"], after["bytes_scanned"]) == (since_first["id"], "cbt", BLOCK)
    points[str(after["id"])] = image.read_bytes()
    assert_restores(cli, repo, points, tmp_path)

    # The chain is a tree: forgetting the full folds it into both of its children, and each keeps its image.
    assert cli("forget", "-r", repo, str(full["id"])).code == 0
    del points[str(full["id"])]
    shown = {b["id"]: b for b in cli("list", "-r", repo, "--json").json["backups"]}
    assert shown[str(first["id"])]["kind"] == shown[str(d["id"])]["kind"] == "full"
    assert cli("forget", "-r", repo, str(first["id"])).code == 0  # the base of two backups again
    del points[str(first["id"])]
    assert cli("prune", "-r", repo).code == 0
    assert_restores(cli, repo, points, tmp_path)
    assert cli("verify", "-r", repo).code == 0


def test_forget_by_rules_keeps_what_a_kept_differential_needs(
    cli: RunCli, tracked: tuple[Path, Path], tmp_path: Path
) -> None:
    """A weekly full and daily differentials, then keep only the last two: both are differentials of a
    full the rules let go, and both still restore after prune."""
    image, repo = tracked
    points: dict[str, bytes] = {}
    full = backup(cli, repo, "full", image)
    for day in range(4):
        write_blocks(image, [10 + day, 60], day + 1)
        d = backup(cli, repo, "incr", image, "--since", "full")
        assert (d["parent"], d["method"], d["bytes_scanned"]) == (full["id"], "cbt", (day + 2) * BLOCK)
        points[str(d["id"])] = image.read_bytes()
    plan = cli("forget", "-r", repo, "--keep-last", "2", "--dry-run", "--json")
    assert plan.code == 0 and full["id"] in [b["id"] for b in plan.json["removed"]]
    assert cli("forget", "-r", repo, "--keep-last", "2").code == 0
    assert cli("prune", "-r", repo).code == 0
    kept = [b["id"] for b in cli("list", "-r", repo, "--json").json["backups"]]
    assert kept == list(points)[-2:]
    assert_restores(cli, repo, {k: points[k] for k in kept}, tmp_path)
    assert cli("verify", "-r", repo).code == 0


def test_a_write_around_the_tracker_makes_the_differential_a_scan(
    cli: RunCli, tracked: tuple[Path, Path], tmp_path: Path
) -> None:
    image, repo = tracked
    full = backup(cli, repo, "full", image)
    write_blocks(image, [5], 1)
    backup(cli, repo, "incr", image)
    with image.open("r+b") as f:  # behind the engine's back
        f.seek(40 * BLOCK + 123)
        f.write(b"written around the tracker")
    diff = cli("incr", "-r", repo, image, "--since", "full", "--json")
    assert diff.code == 0, diff.err
    lines = diff.err.strip().splitlines()
    assert lines[0] == f"cbtbackup: differential: the changes since backup {full['id']}"
    assert len(lines) == 2 and lines[1].startswith("cbtbackup: scan incremental: ")
    assert f"the base backup {full['id']}" in lines[1]
    assert (diff.json["method"], diff.json["parent"]) == ("scan", full["id"])
    assert_restores(cli, repo, {str(diff.json["id"]): image.read_bytes()}, tmp_path)


def test_since_on_an_empty_chain_takes_a_full(cli: RunCli, tracked: tuple[Path, Path]) -> None:
    image, repo = tracked
    first = cli("incr", "-r", repo, image, "--since", "full", "--json")
    assert first.code == 0 and first.json["kind"] == "full"


def test_bad_since_values_are_one_line_and_change_nothing(
    cli: RunCli, tracked: tuple[Path, Path], make_image: MakeImage
) -> None:
    image, repo = tracked
    other = make_image(1 * MiB, name="other.img")
    other_full = backup(cli, repo, "full", other)
    full = backup(cli, repo, "full", image)
    before = sorted(p.name for p in (repo / "backups").rglob("*"))

    cli("incr", "-r", repo, image, "--since", str(other_full["id"])).assert_one_line_error(
        2, f"backup {other_full['id']} belongs to chain {other_full['name']!r}")
    cli("incr", "-r", repo, image, "--since", "0123456789abcdef").assert_one_line_error(
        3, "--since 0123456789abcdef: no such backup")
    cli("full", "-r", repo, image, "--since", str(full["id"])).assert_one_line_error(2, "--since is for incr")
    result = cli("incr", "-r", repo, image, "--since", "nope", "--json")
    assert result.code == 3 and "error" in result.json
    assert sorted(p.name for p in (repo / "backups").rglob("*")) == before
    assert cli("forget", "-r", repo, str(full["id"])).code == 0
    cli("incr", "-r", repo, image, "--since", str(full["id"])).assert_one_line_error(3, "no such backup")


def test_the_scan_provider_compares_with_the_base(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    """Nothing tracks a plain file: a differential reads it all and stores what differs from the base."""
    image = make_image(4 * MiB)
    repo = tmp_path / "repo"
    assert cli("init", "-r", repo, "--encryption", "none").code == 0
    full = backup(cli, repo, "full", image)
    with image.open("r+b") as f:
        f.seek(BLOCK)
        f.write(os.urandom(BLOCK))
    backup(cli, repo, "incr", image)
    with image.open("r+b") as f:
        f.seek(10 * BLOCK)
        f.write(os.urandom(BLOCK))
    diff = backup(cli, repo, "incr", image, "--since", "full")
    assert (diff["provider"], diff["method"], diff["parent"]) == ("scan", "scan", full["id"])
    assert diff["bytes_changed"] == 2 * BLOCK  # both blocks written since the full, against the full
    assert_restores(cli, repo, {str(diff["id"]): image.read_bytes()}, tmp_path)
