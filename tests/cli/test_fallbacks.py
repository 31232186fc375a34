"""When CBT cannot be trusted, incr falls back to a scan and says why; restores stay exact."""

from __future__ import annotations

from pathlib import Path

from cbtbackup.engine import Snapshot, TrackedVolume
from tests.conftest import MakeImage, RunCli

MiB = 1 << 20


def test_generation_reset_gives_a_scan_incremental(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image(8 * MiB)
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    cli("track", image)
    assert cli("full", "-r", repo, image).code == 0
    with open(image, "r+b") as f:  # written while nobody tracked it: the tracker starts a new generation
        f.seek(3 * MiB + 5)
        f.write(b"behind the tracker's back")
    inc = cli("incr", "-r", repo, image, "--json")
    assert inc.code == 0
    assert inc.json["method"] == "scan"
    assert "generation changed" in inc.err and len(inc.err.strip().splitlines()) == 1
    assert inc.json["notes"] and "generation changed" in inc.json["notes"][0]
    assert inc.json["chunks_new"] == 1
    with TrackedVolume.open(image) as vol:  # and CBT is used again afterwards
        vol.write(MiB, b"tracked again")
    assert cli("incr", "-r", repo, image, "--json").json["method"] == "cbt"
    out = tmp_path / "out.img"
    assert cli("restore", "-r", repo, "latest", out).code == 0
    assert out.read_bytes() == image.read_bytes()


def test_overflow_between_backups_gives_a_scan(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image(2 * MiB)
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    cli("track", image)
    with TrackedVolume.open(image) as vol:  # 253 snapshots: the backup's take will be number 254
        for _ in range(253):
            with Snapshot.create([vol]) as snap:
                snap.take()
    assert cli("full", "-r", repo, image, "--json").json["method"] == "full"
    with TrackedVolume.open(image) as vol:
        with Snapshot.create([vol]) as snap:
            snap.take()  # 255: a new generation
        vol.write(0, b"after the overflow")
    inc = cli("incr", "-r", repo, image, "--json")
    assert inc.json["method"] == "scan" and "generation" in inc.err
    out = tmp_path / "out.img"
    assert cli("restore", "-r", repo, "latest", out).code == 0
    assert out.read_bytes() == image.read_bytes()


def test_incr_without_a_previous_backup_takes_a_full(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image(2 * MiB)
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    result = cli("incr", "-r", repo, image, "--json")
    assert result.code == 0 and result.json["kind"] == "full"
    assert "no previous backup" in result.err


def test_scan_of_a_tracked_image_when_asked(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image(2 * MiB)
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    cli("track", image)
    assert cli("full", "-r", repo, image, "--provider", "scan", "--json").json["provider"] == "scan"
    inc = cli("incr", "-r", repo, image, "--json")  # userspace now, but the previous had no checkpoint
    assert inc.json["method"] == "scan" and "no CBT checkpoint" in inc.err
