"""Key files: an encrypted repository opened with its master key from a file, without a passphrase."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import blake3
import pytest

from tests.conftest import PASSPHRASE, MakeImage, RunCli

MiB = 1 << 20


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def repo(cli: RunCli, tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    assert cli("init", "-r", path).code == 0
    return path


def test_a_key_file_opens_the_repository_without_a_passphrase(
    cli: RunCli, make_image: MakeImage, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = make_image(4 * MiB)
    key = tmp_path / "repo.key"
    made = cli("key", "export", "-r", repo, key, "--json")
    assert made.code == 0, made.err
    assert made.json["key_file"] == str(key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert PASSPHRASE.encode() not in key.read_bytes()
    assert not any(p.name == key.name for p in repo.rglob("*"))  # it never enters the repository
    monkeypatch.delenv("CBTBACKUP_PASSWORD")
    full = cli("full", "-r", repo, "--key-file", key, image, "--json")
    assert full.code == 0, full.err
    with open(image, "r+b") as f:
        f.seek(MiB)
        f.write(os.urandom(MiB))
    assert cli("incr", "-r", repo, "--key-file", key, image).code == 0
    monkeypatch.setenv("CBTBACKUP_KEY_FILE", str(key))
    out = tmp_path / "out.img"
    assert cli("restore", "-r", repo, "latest", out).code == 0
    assert out.read_bytes() == image.read_bytes()
    listed = cli("key", "list", "-r", repo, "--json").json["keys"]
    assert [k["current"] for k in listed] == [False]  # no slot opened it
    monkeypatch.setenv("CBTBACKUP_PASSWORD", "a wrong passphrase")  # the key file comes first
    assert cli("list", "-r", repo).code == 0


def test_key_export_never_replaces_a_file_unasked(cli: RunCli, repo: Path, tmp_path: Path) -> None:
    mine = tmp_path / "notes.txt"
    mine.write_text("the user's own file\n")
    cli("key", "export", "-r", repo, mine).assert_one_line_error(2, "exists", "--force")
    assert mine.read_text() == "the user's own file\n"
    cli("key", "export", "-r", repo, tmp_path).assert_one_line_error(2, "directory")
    assert cli("key", "export", "-r", repo, mine, "--force").code == 0
    assert stat.S_IMODE(mine.stat().st_mode) == 0o600
    assert json.loads(mine.read_text())["format"] == "cbtbackup-key-file"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_key_files_that_cannot_be_trusted_are_refused_and_nothing_is_written(
    cli: RunCli, make_image: MakeImage, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = make_image(2 * MiB)
    cli("full", "-r", repo, image)
    key = tmp_path / "repo.key"
    cli("key", "export", "-r", repo, key)
    other = tmp_path / "other"
    cli("init", "-r", other)
    other_key = tmp_path / "other.key"
    cli("key", "export", "-r", other, other_key)
    before = files_of(repo)
    monkeypatch.delenv("CBTBACKUP_PASSWORD")

    key.chmod(0o640)
    cli("incr", "-r", repo, "--key-file", key, image).assert_one_line_error(2, "read or written by others",
                                                                              "chmod 600")
    key.chmod(0o600)
    cli("incr", "-r", repo, "--key-file", other_key, image).assert_one_line_error(12, "another repository")
    cli("list", "-r", repo, "--key-file", tmp_path / "missing.key").assert_one_line_error(3, "key file")

    fields = json.loads(key.read_text())
    edited = dict(fields, master="00" * 32)
    damaged = tmp_path / "damaged.key"
    damaged.write_text(json.dumps(edited))
    damaged.chmod(0o600)
    cli("incr", "-r", repo, "--key-file", damaged, image).assert_one_line_error(5, "damaged or was edited")

    # A well-formed file with this repository's id and someone else's key: the config's MAC tells.
    forged = {k: v for k, v in edited.items() if k != "checksum"}
    forged["checksum"] = blake3.blake3(json.dumps(forged, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    damaged.write_text(json.dumps(forged))
    cli("incr", "-r", repo, "--key-file", damaged, image).assert_one_line_error(12, "does not open")
    assert files_of(repo) == before


def test_key_files_and_what_they_cannot_do(cli: RunCli, repo: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "repo.key"
    cli("key", "export", "-r", repo, key)
    monkeypatch.delenv("CBTBACKUP_PASSWORD")
    monkeypatch.setenv("CBTBACKUP_NEW_PASSWORD", "another passphrase")
    cli("key", "passwd", "-r", repo, "--key-file", key).assert_one_line_error(2, "opened with a key file")
    added = cli("key", "add", "-r", repo, "--key-file", key, "--json")  # a new slot needs only the master key
    assert added.code == 0, added.err
    monkeypatch.setenv("CBTBACKUP_PASSWORD", "another passphrase")
    assert cli("list", "-r", repo).code == 0
    plain = tmp_path / "plain"
    cli("init", "-r", plain, "--encryption", "none")
    cli("key", "export", "-r", plain, tmp_path / "plain.key").assert_one_line_error(2, "not encrypted")
    assert cli("list", "-r", plain, "--key-file", key).code == 0  # not needed there, and not read
    assert not (tmp_path / "plain.key").exists()
