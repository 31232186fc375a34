"""Life-cycle stories shared by the local and the S3 tests: the same commands against any repository."""

from __future__ import annotations

import os
from pathlib import Path

from cbtbackup.engine import TrackedVolume
from tests.conftest import RunCli

MiB = 1 << 20


def write(image: Path, offset: int, length: int) -> None:
    with TrackedVolume.open(image) as vol:
        vol.write(offset, os.urandom(length))


def restores_exactly(cli: RunCli, repo: tuple[str, ...], backup_id: str, expected: bytes, out: Path) -> None:
    result = cli("restore", *repo, backup_id, out, "--json")
    assert result.code == 0, result.err
    assert out.read_bytes() == expected, f"backup {backup_id} restores other bytes"
    out.unlink()


def forget_and_synthesize_story(cli: RunCli, repo: tuple[str, ...], image: Path, tmp_path: Path) -> None:
    """Forget a middle incremental, the full, the newest; synthesize; every kept backup restores exactly."""
    cli("track", image)
    points: dict[str, bytes] = {}  # the backups that must be there, and their images
    images: dict[str, bytes] = {}  # every backup's image, also of those forgotten since

    def backup(kind: str) -> str:
        result = cli(kind, *repo, image, "--json")
        assert result.code == 0, result.err
        points[result.json["id"]] = images[result.json["id"]] = image.read_bytes()
        return str(result.json["id"])

    full = backup("full")
    incrs = []
    for i in range(3):
        write(image, (i * 5 + 1) * MiB, 3 * MiB // 2)
        incrs.append(backup("incr"))
    for backup_id in points:
        verify = cli("verify", *repo, backup_id, "--json")
        assert verify.code == 0, verify.err

    def check_all() -> None:
        left = cli("list", *repo, "--json").json["backups"]
        assert {b["id"] for b in left} == set(points)
        for b in left:
            restores_exactly(cli, repo, b["id"], images[b.get("synthesized_from") or b["id"]], tmp_path / "r.img")
        assert cli("verify", *repo).code == 0

    middle = cli("forget", *repo, incrs[0], "--json")
    assert middle.code == 0, middle.err
    assert [r["id"] for r in middle.json["removed"]] == [incrs[0]]
    del points[incrs[0]]
    check_all()
    child = {b["id"]: b for b in cli("list", *repo, "--json").json["backups"]}[incrs[1]]
    assert child["parent"] == full

    assert cli("forget", *repo, full).code == 0
    del points[full]
    check_all()
    now_full = {b["id"]: b for b in cli("list", *repo, "--json").json["backups"]}[incrs[1]]
    assert now_full["kind"] == "full" and now_full["parent"] is None

    assert cli("forget", *repo, incrs[2]).code == 0
    del points[incrs[2]]
    check_all()
    write(image, 20 * MiB, MiB)
    after = cli("incr", *repo, image, "--json").json
    assert after["parent"] == incrs[1] and after["method"] == "cbt", after
    points[after["id"]] = images[after["id"]] = image.read_bytes()

    synthetic = cli("synthesize", *repo, after["id"], "--json")
    assert synthetic.code == 0, synthetic.err
    points[synthetic.json["id"]] = images[synthetic.json["id"]] = images[after["id"]]
    rows = {b["id"]: b for b in cli("list", *repo, "--json").json["backups"]}
    assert rows[synthetic.json["id"]]["kind"] == "full" and rows[synthetic.json["id"]]["method"] == "synthetic"
    check_all()
    write(image, 30 * MiB, MiB)
    nxt = cli("incr", *repo, image, "--json").json
    assert nxt["parent"] == synthetic.json["id"] and nxt["method"] == "cbt"
    points[nxt["id"]] = images[nxt["id"]] = image.read_bytes()
    # The chain of the synthetic full can lose everything older: it needs none of it.
    assert cli("forget", *repo, incrs[1], after["id"]).code == 0
    del points[incrs[1]], points[after["id"]]
    pruned = cli("prune", *repo, "--json")
    assert pruned.code == 0 and pruned.json["chunks_deleted"] > 0, pruned.out
    check_all()
