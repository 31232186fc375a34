"""The main job through the CLI: track an image, write through the engine, full, incrs, restore every point."""

from __future__ import annotations

import os
import random
from pathlib import Path

from cbtbackup.engine import TrackedVolume
from tests.conftest import MakeImage, RunCli

MiB = 1 << 20


def scribble(image: Path, rng: random.Random, writes: int) -> None:
    """Scattered writes through the engine: small, block-sized, chunk-crossing, and zeros."""
    with TrackedVolume.open(image) as vol:
        for _ in range(writes):
            offset = rng.randrange(vol.size)
            length = min(rng.choice([1, 4096, 65536, 300_000, 2 * MiB]), vol.size - offset)
            data = bytes(length) if rng.random() < 0.2 else rng.randbytes(length)
            vol.write(offset, data)


def test_full_then_incrementals_restore_every_point(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image(24 * MiB + 12345)  # not a multiple of anything
    repo = tmp_path / "repo"
    assert cli("init", "-r", repo, "--chunk-size", "1MiB").code == 0
    tracked = cli("track", image, "--json")
    assert tracked.code == 0 and tracked.json["block_size"] == 64 << 10
    rng = random.Random(7)
    scribble(image, rng, 20)

    points: list[tuple[str, bytes]] = []
    first = cli("full", "-r", repo, image, "--json")
    assert first.code == 0, first.err
    assert (first.json["kind"], first.json["method"], first.json["provider"]) == ("full", "full", "userspace")
    points.append((first.json["id"], image.read_bytes()))

    for round_no in range(4):
        scribble(image, rng, 15)
        info = cli("cbt", "info", image, "--json")
        assert info.code == 0 and info.json["dirty_blocks"] > 0
        inc = cli("incr", "-r", repo, image, "--json")
        assert inc.code == 0, inc.err
        j = inc.json
        assert (j["kind"], j["method"], j["parent"]) == ("incr", "cbt", points[-1][0]), round_no
        assert j["bytes_scanned"] < image.stat().st_size // 2  # only the changed blocks were read
        assert inc.err == ""  # no fallback note
        points.append((j["id"], image.read_bytes()))

    listing = cli("list", "-r", repo, "--json")
    assert [b["id"] for b in listing.json["backups"]] == [p[0] for p in points]
    for i, (backup_id, expected) in enumerate(points):
        target = tmp_path / f"restored-{i}.img"
        result = cli("restore", "-r", repo, backup_id[:8], target, "--json")
        assert result.code == 0, result.err
        assert target.read_bytes() == expected, f"point {i} differs"
    latest = tmp_path / "latest.img"
    assert cli("restore", "-r", repo, "latest", latest).code == 0
    assert latest.read_bytes() == points[-1][1]
    assert cli("verify", "-r", repo, "--json").json["ok"] is True


def test_unchanged_incremental_stores_nothing(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image(4 * MiB)
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    cli("track", image)
    assert cli("full", "-r", repo, image).code == 0
    inc = cli("incr", "-r", repo, image, "--json").json
    assert (inc["method"], inc["bytes_scanned"], inc["chunks_new"]) == ("cbt", 0, 0)


def test_sparse_restore_of_zero_extents(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image(16 * MiB, zeros=True)
    with open(image, "r+b") as f:
        f.write(os.urandom(MiB))
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    full = cli("full", "-r", repo, image, "--json").json
    assert full["chunks_new"] == 1 and full["provider"] == "scan"
    target = tmp_path / "out.img"
    assert cli("restore", "-r", repo, "latest", target).code == 0
    assert target.read_bytes() == image.read_bytes()
    assert target.stat().st_blocks * 512 < 4 * MiB  # the zero extents stayed holes
