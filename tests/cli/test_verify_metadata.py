"""verify sees every object, not only chunks and manifests: the config and its copy, the chains' heads and
the lock objects; a flipped byte in the config loses nothing (its copy opens the repository, with one
line), and verify --repair rebuilds the config, heads and dead locks. Plain and encrypted repositories."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.conftest import MakeImage, RunCli, stored_key

MiB = 1 << 20


@pytest.fixture(params=["none", "aes-256-gcm"], ids=["plain", "encrypted"])
def repo(request: pytest.FixtureRequest, cli: RunCli, tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    assert cli("init", "-r", path, "--encryption", request.param).code == 0
    return path


def flip_a_byte(path: Path, text: bytes) -> None:
    """Change the byte just after ``text`` in the file (a digit): the JSON stays valid, a value changes."""
    raw = bytearray(path.read_bytes())
    at = raw.index(text) + len(text)  # the byte after it: a digit of a level
    raw[at] = ord("4") if raw[at] != ord("4") else ord("5")
    path.write_bytes(bytes(raw))


def test_a_flipped_byte_in_the_config_opens_with_its_copy_and_repair_writes_it_again(
    cli: RunCli, repo: Path, make_image: MakeImage, tmp_path: Path
) -> None:
    image = make_image(2 * MiB)
    backup = cli("full", "-r", repo, image, "--json").json["id"]
    flip_a_byte(repo / "config", b'"zstd:')
    listed = cli("list", "-r", repo, "--json")
    assert listed.code == 0 and [b["id"] for b in listed.json["backups"]] == [backup]
    note = [line for line in listed.err.splitlines() if "config object is damaged" in line]
    assert len(note) == 1 and "config.copy" in note[0] and "verify --repair" in note[0]
    checked = cli("verify", "-r", repo, "--json")
    assert checked.code == 5 and "config" in checked.json["damaged_metadata"]
    repaired = cli("verify", "-r", repo, "--repair", "--json")
    assert repaired.code == 0 and repaired.json["repaired"] == ["config"]
    assert (repo / "config").read_bytes() == (repo / "config.copy").read_bytes()
    again = cli("list", "-r", repo)
    assert again.code == 0 and "damaged" not in again.err
    out = tmp_path / "out.img"
    assert cli("restore", "-r", repo, backup, out).code == 0 and out.read_bytes() == image.read_bytes()


def test_both_copies_damaged_is_one_clear_line(cli: RunCli, repo: Path) -> None:
    for name in ("config", "config.copy"):
        flip_a_byte(repo / name, b'"zstd:')
    result = cli("list", "-r", repo)
    result.assert_one_line_error(5, "config")
    assert "copy" not in result.err  # the first object's error: the copy was no better


def test_a_repository_without_a_copy_is_told_and_repair_adds_it(cli: RunCli, repo: Path) -> None:
    (repo / "config.copy").unlink()  # as an earlier version made it
    checked = cli("verify", "-r", repo, "--json")
    assert checked.code == 0 and "config.copy" in checked.json["stale"]  # not damage: nothing is lost
    assert "stale config.copy: missing" in cli("verify", "-r", repo).out
    assert cli("verify", "-r", repo, "--repair").code == 0
    assert (repo / "config.copy").read_bytes() == (repo / "config").read_bytes()


def test_a_damaged_head_is_reported_and_rebuilt_and_a_stale_one_is_no_damage(
    cli: RunCli, repo: Path, make_image: MakeImage
) -> None:
    image = make_image(MiB)
    first = cli("full", "-r", repo, image, "--json").json
    head = repo / stored_key(repo, f"heads/{first['name']}")
    naming_first = head.read_bytes()
    image.write_bytes(os.urandom(MiB))
    cli("full", "-r", repo, image, "--json")
    head.write_bytes(b"\x00garbage")
    checked = cli("verify", "-r", repo, "--json")
    assert checked.code == 5 and f"heads/{first['name']}" in checked.json["damaged_metadata"]
    assert cli("incr", "-r", repo, image).code == 0  # a head is a hint: backups go on
    assert cli("verify", "-r", repo, "--repair").code == 0
    whole = cli("verify", "-r", repo, "--json")
    assert whole.code == 0 and whole.json["damaged_metadata"] == {} and whole.json["stale"] == {}
    # Stale: what a run killed between its manifest and its head leaves. Reported, not damage.
    head.write_bytes(naming_first)
    stale = cli("verify", "-r", repo, "--json")
    assert stale.code == 0 and first["id"] in stale.json["stale"][f"heads/{first['name']}"]
    assert cli("verify", "-r", repo, "--repair").code == 0
    assert cli("verify", "-r", repo, "--json").json["stale"] == {}


def test_an_unreadable_lock_is_reported_and_removed_once_surely_dead(cli: RunCli, repo: Path) -> None:
    locks = repo / "locks"
    locks.mkdir(exist_ok=True)
    fresh, old = locks / "0123456789abcdef", locks / "fedcba9876543210"
    fresh.write_bytes(b"not a lock")
    old.write_bytes(b"not a lock either")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    checked = cli("verify", "-r", repo, "--json")
    assert checked.code == 5
    assert set(checked.json["damaged_metadata"]) == {"locks/0123456789abcdef", "locks/fedcba9876543210"}
    repaired = cli("verify", "-r", repo, "--repair", "--json")
    assert repaired.json["repaired"] == ["locks/fedcba9876543210"] and not old.exists()
    assert fresh.exists() and repaired.code == 5  # one a live writer may still be refreshing: kept
    assert "written less than 30 minutes ago" in repaired.json["damaged_metadata"]["locks/0123456789abcdef"]
