"""A flipped byte in a stored chunk: verify and restore fail, naming the chunk and the backups it breaks."""

from __future__ import annotations

from pathlib import Path

import blake3
import pytest

from cbtbackup.engine import TrackedVolume
from tests.conftest import MakeImage, RunCli, stored_manifests

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


def flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def test_verify_quarantines_and_the_next_full_heals(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image(4 * MiB)
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    first = cli("full", "-r", repo, image, "--json").json
    victim = chunk_files(repo)[0]
    digest = victim.name
    flip(victim)

    bad = cli("verify", "-r", repo)
    bad.assert_one_line_error(5, digest, first["id"])
    assert f"quarantined quarantine/chunks/{digest[:2]}/{digest}" in bad.out
    assert not victim.exists() and (repo / "quarantine" / "chunks" / digest[:2] / digest).exists()

    second = cli("full", "-r", repo, image, "--json").json  # dedup no longer trusts the bad chunk
    assert second["chunks_new"] == 1
    assert victim.exists()
    out = tmp_path / "out.img"
    assert cli("restore", "-r", repo, second["id"], out).code == 0
    assert out.read_bytes() == image.read_bytes()
    # The bytes came back under the same name, so the older backup is whole again too.
    repaired = cli("verify", "-r", repo, "--repair", "--json")
    assert repaired.code == 0 and repaired.json["healed"] == [f"chunks/{digest[:2]}/{digest}"], repaired.out
    assert not (repo / "quarantine" / "chunks" / digest[:2] / digest).exists()
    assert cli("restore", "-r", repo, first["id"], tmp_path / "first.img").code == 0
    assert (tmp_path / "first.img").read_bytes() == image.read_bytes()


def test_bytes_that_changed_since_leave_older_backups_named(
    cli: RunCli, make_image: MakeImage, tmp_path: Path
) -> None:
    image = make_image(4 * MiB)
    repo = tmp_path / "repo"
    cli("init", "-r", repo, "--encryption", "none")  # the test names a chunk by its plain BLAKE3
    cli("track", image)
    full = cli("full", "-r", repo, image, "--json").json
    with TrackedVolume.open(image) as vol:
        vol.write(3 * MiB, b"x" * 100)
    incr = cli("incr", "-r", repo, image, "--json").json
    first_digest = blake3.blake3(image.read_bytes()[:MiB]).hexdigest()  # the first chunk: both backups need it
    victim = next(p for p in chunk_files(repo) if p.name == first_digest)
    flip(victim)
    with TrackedVolume.open(image) as vol:  # the source moves on: those bytes are gone from it too
        vol.write(0, b"new" * 1000)
    cli("verify", "-r", repo).assert_one_line_error(5, first_digest, full["id"], incr["id"])

    nxt = cli("incr", "-r", repo, image, "--json").json
    assert nxt["method"] == "cbt"
    out = tmp_path / "out.img"
    assert cli("restore", "-r", repo, nxt["id"], out).code == 0
    assert out.read_bytes() == image.read_bytes()  # the newest backup stored what it needs
    still = cli("verify", "-r", repo, "--json")
    assert still.code == 5 and sorted(still.json["damaged_backups"]) == sorted([full["id"], incr["id"]])
    restore_old = cli("restore", "-r", repo, full["id"], tmp_path / "old.img")
    restore_old.assert_one_line_error(5, first_digest, full["id"])


def test_an_incremental_reads_again_what_verify_quarantined(
    cli: RunCli, make_image: MakeImage, tmp_path: Path
) -> None:
    """The source still holds the lost bytes: the next incremental, even by CBT, stores them again."""
    image = make_image(4 * MiB)
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    cli("track", image)
    full = cli("full", "-r", repo, image, "--json").json
    victim = chunk_files(repo)[2]
    flip(victim)
    assert cli("verify", "-r", repo).code == 5
    inc = cli("incr", "-r", repo, image, "--json")
    assert inc.json["method"] == "cbt" and any("re-reading" in n for n in inc.json["notes"]), inc.json
    assert cli("verify", "-r", repo, "--repair").code == 0
    assert cli("restore", "-r", repo, full["id"], tmp_path / "a.img").code == 0
    assert (tmp_path / "a.img").read_bytes() == image.read_bytes()


def test_an_unreadable_manifest_is_reported_and_passed_over(
    cli: RunCli, make_image: MakeImage, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    a = cli("full", "-r", repo, make_image(MiB), "--name", "a", "--json").json
    b = cli("full", "-r", repo, make_image(MiB), "--name", "b", "--json").json
    manifest = repo / next(iter(stored_manifests(repo, "a").values()))
    flip(manifest)
    listed = cli("list", "-r", repo, "--json")
    assert listed.code == 0 and [r["id"] for r in listed.json["backups"]] == [b["id"]]
    assert listed.json["unreadable"][0]["id"] == a["id"] and "cannot be read" in listed.err
    assert cli("restore", "-r", repo, b["id"], tmp_path / "b.img").code == 0
    checked = cli("verify", "-r", repo, "--json")
    assert checked.code == 5 and checked.json["damaged_backups"] == [a["id"]]
    assert checked.json["chunks_checked"] == 1  # b's chunk was still checked
    repaired = cli("verify", "-r", repo, "--repair", "--json")
    assert repaired.code == 5 and any(k.startswith("quarantine/backups/a/") for k in repaired.json["quarantined"])
    assert cli("verify", "-r", repo).code == 0  # the bad manifest is aside now
    assert cli("list", "-r", repo, "--json").json["unreadable"] == []


@pytest.mark.parametrize(("encryption", "why"), [("none", "belongs under"), ("aes-256-gcm", "fails authentication")])
def test_an_older_manifest_copied_over_a_newer_one_is_detected(
    cli: RunCli, make_image: MakeImage, tmp_path: Path, encryption: str, why: str
) -> None:
    image = make_image(2 * MiB)
    repo = tmp_path / "repo"
    cli("init", "-r", repo, "--encryption", encryption)
    cli("track", image)
    old = cli("full", "-r", repo, image, "--json").json
    with TrackedVolume.open(image) as vol:
        vol.write(0, b"newer")
    new = cli("incr", "-r", repo, image, "--json").json
    chain = [repo / key for key in stored_manifests(repo, new["name"]).values()]
    chain[1].write_bytes(chain[0].read_bytes())  # the old manifest under the new one's key
    restored = cli("restore", "-r", repo, new["id"], tmp_path / "out.img")
    restored.assert_one_line_error(5, why)
    assert not (tmp_path / "out.img").exists()
    assert cli("verify", "-r", repo, "--json").json["unreadable_manifests"]
    assert old["id"] in cli("list", "-r", repo).out
