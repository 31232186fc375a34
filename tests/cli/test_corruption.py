"""A flipped byte in a stored chunk: verify and restore fail, naming the chunk and the backups it breaks."""

from __future__ import annotations

from pathlib import Path

from cbtbackup.engine import TrackedVolume
from tests.conftest import MakeImage, RunCli

MiB = 1 << 20


def chunk_files(repo: Path) -> list[Path]:
    return sorted(p for p in (repo / "chunks").rglob("*") if p.is_file())


def test_flipped_byte(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image(4 * MiB)
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    cli("track", image)
    full_id = cli("full", "-r", repo, image, "--json").json["id"]
    with TrackedVolume.open(image) as vol:
        vol.write(3 * MiB, b"changed")
    inc_id = cli("incr", "-r", repo, image, "--json").json["id"]
    other_id = cli("full", "-r", repo, make_image(MiB), "--name", "other", "--json").json["id"]

    victim = chunk_files(repo)[0]
    # Find which backups use it: a chunk of the first 3 MiB is in both backups of the image.
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    digest = victim.name

    bad = cli("verify", "-r", repo)
    users = [b for b in (full_id, inc_id, other_id) if b in bad.err]
    bad.assert_one_line_error(5, digest, "corrupt")
    assert users, bad.err  # the affected backups are named
    assert cli("verify", "-r", repo, other_id if other_id not in users else full_id).code in (0, 5)

    target = tmp_path / "restored.img"
    result = cli("restore", "-r", repo, users[-1], target)
    result.assert_one_line_error(5, digest, users[-1])
    assert not target.exists()  # nothing written as if it were good
    assert not list(tmp_path.glob(".restored.img.*"))


def test_missing_chunk(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image(2 * MiB)
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    backup_id = cli("full", "-r", repo, image, "--json").json["id"]
    victim = chunk_files(repo)[1]
    victim.unlink()
    cli("verify", "-r", repo).assert_one_line_error(5, victim.name, "missing", backup_id)
