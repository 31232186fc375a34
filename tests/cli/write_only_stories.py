"""Write-only host keys, told through the command line, on any repository (local here, S3 in tests/s3).

A host holds only a write-only key: it backs up and increments, by CBT while every write goes through the
engine and by a scan after a write around it; everything that reads backups fails with one line and exit
13 and changes nothing; the holder of the passphrase restores every backup byte for byte. Losing the host's
record of its chain costs one backup that reads everything and stores what the repository lacks."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cbtbackup.engine import TrackedVolume
from tests.conftest import MakeImage, RunCli

MiB = 1 << 20
Snapshot = Callable[[], dict[str, bytes]]  # every object of the repository, by key


def make_write_only_key(cli: RunCli, repo: tuple[str, ...], tmp_path: Path, name: str = "host.key") -> Path:
    key = tmp_path / name
    made = cli("key", "export", "--write-only", *repo, key, "--json")
    assert made.code == 0, made.err
    assert made.json["write_only"] is True and made.json["key_file"] == str(key)
    return key


def write_only_story(cli: RunCli, repo: tuple[str, ...], make_image: MakeImage, tmp_path: Path,
                     snapshot: Snapshot, monkeypatch: pytest.MonkeyPatch) -> None:
    passphrase = os.environ["CBTBACKUP_PASSWORD"]
    assert cli("init", *repo).code == 0
    other = make_image(4 * MiB, name="other.img")  # another host's chain, backed up with the full key
    assert cli("full", *repo, other, "--name", "other-host").code == 0
    key = make_write_only_key(cli, repo, tmp_path)
    image = make_image(8 * MiB)
    assert cli("track", image).code == 0
    monkeypatch.delenv("CBTBACKUP_PASSWORD")  # from here the host has its write-only key alone
    wo = (*repo, "--key-file", key)
    taken: dict[str, bytes] = {}

    def backup(kind: str) -> dict[str, Any]:
        # Every block sampled: the next incremental checks all those its tracking reports unchanged.
        done = cli(kind, *wo, image, "--verify-unchanged", "100%", "--json")
        assert done.code == 0, done.err
        taken[str(done.json["id"])] = image.read_bytes()
        return done.json

    full = backup("full")
    assert full["kind"] == "full" and full["chunks_new"] == 8
    with TrackedVolume.open(image) as vol:
        vol.write(3 * MiB + 4096, os.urandom(70_000))
    incr = backup("incr")
    assert incr["method"] == "cbt" and incr["parent"] == full["id"]
    assert incr["bytes_stored"] < MiB // 2 and incr["bytes_sampled_unchanged"] > 0
    with open(image, "r+b") as f:  # around the tracker: the next incremental must not trust it
        f.seek(6 * MiB + 123)
        f.write(b"written around the tracker")
    scan = backup("incr")
    assert scan["method"] == "scan" and scan["parent"] == incr["id"]
    # Two windows stored whole: the one written around the tracker, and the one the CBT incremental cut into
    # pieces. A host that cannot read the previous bytes compares whole chunks by their ids alone.
    assert scan["chunks_new"] == 2

    before = snapshot()
    out = tmp_path / "out.img"
    for command in (("restore", *wo, "latest", out), ("list", *wo), ("verify", *wo),
                    ("forget", *wo, str(full["id"])), ("prune", *wo), ("stats", *wo),
                    ("key", "list", *wo), ("key", "export", *wo, tmp_path / "stolen.key"),
                    ("diff", *wo, str(full["id"]), str(scan["id"])), ("unlock", *wo),
                    ("export-diff", *wo, str(scan["id"]), tmp_path / "stream"), ("synthesize", *wo, str(scan["id"])),
                    ("mount", *wo, tmp_path), ("serve", *wo, str(scan["id"])), ("web", *wo)):
        cli(*command).assert_one_line_error(13, "write-only")
    assert not out.exists() and not (tmp_path / "stolen.key").exists() and not (tmp_path / "stream").exists()
    assert snapshot() == before  # nothing changed

    state = Path(f"{key}.state")
    shutil.rmtree(state)  # the host lost its record: one backup reads everything, none misses anything
    with TrackedVolume.open(image) as vol:
        vol.write(MiB, os.urandom(4096))
    lost = cli("incr", *wo, image, "--json")
    assert lost.code == 0, lost.err
    assert lost.json["kind"] == "full" and "keeps no record" in " ".join(lost.json["notes"])
    assert lost.json["chunks_reused"] >= 5  # windows no change touched since the first full are not sent again
    taken[str(lost.json["id"])] = image.read_bytes()
    with TrackedVolume.open(image) as vol:
        vol.write(7 * MiB, os.urandom(4096))
    assert backup("incr")["method"] == "cbt"  # and the record is back

    monkeypatch.setenv("CBTBACKUP_PASSWORD", passphrase)
    for backup_id, expected in taken.items():
        restored = tmp_path / f"restored-{backup_id}.img"
        assert cli("restore", *repo, backup_id, restored).code == 0
        assert restored.read_bytes() == expected, f"backup {backup_id} does not restore its take"
    verified = cli("verify", *repo, "--json")
    assert verified.code == 0, verified.err
    restored_other = tmp_path / "other-restored.img"
    assert cli("restore", *repo, "other-host@latest", restored_other).code == 0
    assert restored_other.read_bytes() == other.read_bytes()
