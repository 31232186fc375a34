"""Encrypted repositories through the command line: passphrase sources, key slots, tampering, secrecy."""

from __future__ import annotations

import os
import pty
import select
import shutil
import sys
import time
from pathlib import Path

import pytest

from cbtbackup.engine import TrackedVolume
from tests.cli.encryption_stories import MARKER, marker_image, no_marker_under, tamper_story
from tests.conftest import PASSPHRASE, MakeImage, RunCli

MiB = 1 << 20


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_default_is_encrypted_and_plaintext_still_works(cli: RunCli, make_image: MakeImage,
                                                            tmp_path: Path) -> None:
    image = make_image(2 * MiB)
    made = cli("init", "-r", tmp_path / "enc", "--json").json
    assert made["encryption"] == "aes-256-gcm"
    plain = cli("init", "-r", tmp_path / "plain", "--encryption", "none", "--json").json
    assert plain["encryption"] == "none"
    for repo in ("enc", "plain"):
        backup_id = cli("full", "-r", tmp_path / repo, image, "--json").json["id"]
        out = tmp_path / f"{repo}.out"
        assert cli("restore", "-r", tmp_path / repo, backup_id, out).code == 0
        assert out.read_bytes() == image.read_bytes()


def test_a_wrong_or_missing_passphrase_is_one_line_and_writes_nothing(
    cli: RunCli, make_image: MakeImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    image = make_image(2 * MiB)
    cli("init", "-r", repo)
    cli("full", "-r", repo, image)
    before = files_of(repo)
    monkeypatch.setenv("CBTBACKUP_PASSWORD", "guess")
    cli("incr", "-r", repo, image).assert_one_line_error(12, "wrong passphrase")
    cli("list", "-r", repo, "--json").assert_one_line_error(12, "wrong passphrase")
    monkeypatch.delenv("CBTBACKUP_PASSWORD")
    cli("list", "-r", repo).assert_one_line_error(12, "encrypted: give its passphrase")
    assert files_of(repo) == before


def test_passphrase_from_a_file_and_a_command(cli: RunCli, make_image: MakeImage, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    monkeypatch.delenv("CBTBACKUP_PASSWORD")
    secret = tmp_path / "secret"
    secret.write_text(PASSPHRASE + "\nsecond line ignored\n")
    assert cli("list", "-r", repo, "--password-file", secret).code == 0
    assert cli("list", "-r", repo, "--password-command", f"cat {secret}").code == 0
    cli("list", "-r", repo, "--password-command", "false").assert_one_line_error(12, "exited with 1")
    cli("list", "-r", repo, "--password-file", tmp_path / "nope").assert_one_line_error(3, "password file")
    monkeypatch.setenv("CBTBACKUP_PASSWORD", "wrong")  # the option wins over the environment
    assert cli("list", "-r", repo, "--password-file", secret).code == 0


def test_passphrase_from_a_prompt_on_a_terminal(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    image = make_image(MiB)
    backup_id = cli("full", "-r", repo, image, "--json").json["id"]
    env = {k: v for k, v in os.environ.items() if k != "CBTBACKUP_PASSWORD"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: its controlling terminal is the pty
        os.execve(sys.executable, [sys.executable, "-m", "cbtbackup", "list", "-r", str(repo)], env)
    seen = bytearray()

    def read_until(text: bytes, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while text not in seen and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                seen.extend(chunk)

    read_until(b"Passphrase for")
    assert b"Passphrase for" in seen, seen
    os.write(fd, PASSPHRASE.encode() + b"\n")
    read_until(backup_id.encode())
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, seen
    assert backup_id.encode() in seen and PASSPHRASE.encode() not in seen  # not echoed


def test_key_add_remove_passwd(cli: RunCli, make_image: MakeImage, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    image = make_image(4 * MiB)
    cli("init", "-r", repo)
    cli("track", image)
    taken: dict[str, bytes] = {}

    def backup() -> None:
        with TrackedVolume.open(image) as vol:
            vol.write(len(taken) * MiB // 2, os.urandom(4096))
        result = cli("incr", "-r", repo, image, "--json")
        assert result.code == 0, result.err
        taken[result.json["id"]] = image.read_bytes()

    def restores_all() -> None:
        for backup_id, expected in taken.items():
            out = tmp_path / "out.img"
            assert cli("restore", "-r", repo, backup_id, out).code == 0
            assert out.read_bytes() == expected
            out.unlink()

    backup()
    first = cli("key", "list", "-r", repo, "--json").json["keys"]
    assert len(first) == 1 and first[0]["current"]
    new_file = tmp_path / "new"
    new_file.write_text("second passphrase\n")
    added = cli("key", "add", "-r", repo, "--new-password-file", new_file, "--json")
    assert added.code == 0, added.err
    restores_all()
    backup()
    monkeypatch.setenv("CBTBACKUP_PASSWORD", "second passphrase")
    restores_all()  # the new passphrase opens it too
    listed = cli("key", "list", "-r", repo, "--json").json["keys"]
    assert {k["id"] for k in listed} == {first[0]["id"], added.json["added"]}
    cli("key", "remove", "-r", repo, added.json["added"]).assert_one_line_error(2, "unlocked with")
    assert cli("key", "remove", "-r", repo, first[0]["id"]).code == 0
    cli("key", "remove", "-r", repo, added.json["added"]).assert_one_line_error(2, "unlocked with")
    monkeypatch.setenv("CBTBACKUP_PASSWORD", PASSPHRASE)
    cli("list", "-r", repo).assert_one_line_error(12, "wrong passphrase")  # the old one is gone
    monkeypatch.setenv("CBTBACKUP_PASSWORD", "second passphrase")
    backup()
    monkeypatch.setenv("CBTBACKUP_NEW_PASSWORD", "third passphrase")
    changed = cli("key", "passwd", "-r", repo, "--json")
    assert changed.code == 0 and changed.json["removed"] == added.json["added"]
    cli("list", "-r", repo).assert_one_line_error(12, "wrong passphrase")
    monkeypatch.setenv("CBTBACKUP_PASSWORD", "third passphrase")
    restores_all()
    assert len(cli("key", "list", "-r", repo, "--json").json["keys"]) == 1
    plain = tmp_path / "plain"
    cli("init", "-r", plain, "--encryption", "none")
    cli("key", "add", "-r", plain, "--new-password-file", new_file).assert_one_line_error(2, "not encrypted")


def test_tampering_is_detected_and_named(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    tamper_story(cli, ("-r", str(repo)), make_image, tmp_path, LocalObjects(repo))


def test_nothing_in_the_clear(cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    image = marker_image(tmp_path / "marker.img")
    cli("init", "-r", repo)
    cli("track", image)
    assert cli("full", "-r", repo, image).code == 0
    with TrackedVolume.open(image) as vol:
        vol.write(MiB, MARKER * 100)
    assert cli("incr", "-r", repo, image).code == 0
    no_marker_under(repo)
    no_marker_under(image.with_name(image.name + ".cbt"))  # the tracker's state holds no data, no key
    plain = tmp_path / "plain"
    cli("init", "-r", plain, "--encryption", "none")
    cli("full", "-r", plain, image, "--provider", "scan")
    with pytest.raises(AssertionError):
        no_marker_under(plain)  # the check can fail: a plaintext repository shows the marker


class LocalObjects:
    """The tamper story's view of a local repository's objects."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def keys(self, prefix: str) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in (self.root / prefix).rglob("*") if p.is_file())

    def get(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def put(self, key: str, data: bytes) -> None:
        (self.root / key).write_bytes(data)

    def snapshot(self) -> Path:
        saved = self.root.with_name(self.root.name + ".saved")
        shutil.rmtree(saved, ignore_errors=True)
        shutil.copytree(self.root, saved)
        return saved

    def restore(self, saved: Path) -> None:
        shutil.rmtree(self.root)
        shutil.copytree(saved, self.root)
