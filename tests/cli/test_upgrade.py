"""``upgrade``: an encrypted repository of format version 1 (chain names and times in object names, key
slots with their host in plaintext) gets private names, keeps every backup byte for byte, goes on by CBT,
and is whole wherever an upgrade is killed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import blake3
import pytest

from cbtbackup.engine import TrackedVolume
from cbtbackup.pipeline.upgrade import run_upgrade
from cbtbackup.repo.local_store import LocalStore
from cbtbackup.repo.repository import Repository
from tests.cli.write_only_stories import make_write_only_key
from tests.conftest import PASSPHRASE, MakeImage, RunCli, stored_manifests

MiB = 1 << 20
OLD_HOST = "zq7oldslothost"


def stored(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def as_old_slot(path: Path) -> None:
    """Make a key slot look as slots of earlier versions were: host and time in plaintext."""
    fields = json.loads(path.read_bytes())
    fields.pop("checksum")
    fields.pop("about")
    fields.update(created=1_700_000_000.0, host=OLD_HOST)
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    path.write_text(json.dumps({**fields, "checksum": blake3.blake3(canonical).hexdigest()}))


def version_one_repository(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    """Two chains, a CBT incremental, a quarantined manifest and a key slot of the old form."""
    repo = tmp_path / "repo"
    assert cli("init", "-r", repo, "--plain-names").code == 0
    as_old_slot(next((repo / "keys").iterdir()))
    image = make_image(4 * MiB)
    cli("track", image)
    points = {}
    full = cli("full", "-r", repo, image, "--name", "web", "--json").json
    points[full["id"]] = image.read_bytes()
    with TrackedVolume.open(image) as vol:
        vol.write(MiB + 512, os.urandom(30_000))
    incr = cli("incr", "-r", repo, image, "--name", "web", "--json").json
    assert incr["method"] == "cbt"
    points[incr["id"]] = image.read_bytes()
    other = make_image(MiB, name="other.img")
    points[cli("full", "-r", repo, other, "--name", "sqlvm", "--json").json["id"]] = other.read_bytes()
    broken = cli("full", "-r", repo, make_image(MiB, name="broken.img"), "--name", "broken", "--json").json
    manifest = repo / stored_manifests(repo, "broken")[broken["id"]]
    manifest.write_bytes(manifest.read_bytes()[:-1] + b"\0")
    assert cli("verify", "-r", repo, "--repair").code == 5  # the broken manifest goes to quarantine
    assert any(k.startswith("quarantine/backups/broken/") for k in stored(repo))
    return repo, image, points


def test_upgrade_makes_names_private_and_keeps_every_backup(
    cli: RunCli, make_image: MakeImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, image, points = version_one_repository(cli, make_image, tmp_path)
    old_key = make_write_only_key(cli, ("-r", str(repo)), tmp_path)
    before = {b["id"]: b for b in cli("list", "-r", repo, "--json").json["backups"]}
    assert OLD_HOST in cli("key", "list", "-r", repo).out

    done = cli("upgrade", "-r", repo, "--json")
    assert done.code == 0, done.err
    assert done.json["upgraded"] is True and done.json["version"] == 2
    assert done.json["manifests"] == 3 and done.json["heads"] == 2 and done.json["quarantined"] == 1
    assert done.json["key_slots_sealed"] == 1 and done.json["old_objects_removed"] == 3 + 2 + 1 + 1

    config = json.loads((repo / "config").read_bytes())
    assert config["version"] == 2 and config["names"] == "private"
    assert (repo / "config.copy").read_bytes() == (repo / "config").read_bytes()
    for key, data in stored(repo).items():
        for secret in ("web", "sqlvm", "broken", *(b["stamp"][:15] for b in before.values())):
            assert secret not in key, key
        assert OLD_HOST.encode() not in data, key
    assert OLD_HOST in cli("key", "list", "-r", repo).out  # sealed, not lost
    assert {b["id"]: b for b in cli("list", "-r", repo, "--json").json["backups"]} == before
    for backup_id, data in points.items():
        out = tmp_path / f"{backup_id}.img"
        assert cli("restore", "-r", repo, backup_id, out).code == 0
        assert out.read_bytes() == data
    assert cli("verify", "-r", repo).code == 0  # the quarantined manifest is aside, not damage

    with TrackedVolume.open(image) as vol:
        vol.write(3 * MiB, os.urandom(4096))
    after = cli("incr", "-r", repo, image, "--name", "web", "--json").json
    assert after["method"] == "cbt" and after["parent"] in points  # the chain goes on where it was
    out = tmp_path / "after.img"
    assert cli("restore", "-r", repo, after["id"], out).code == 0 and out.read_bytes() == image.read_bytes()

    monkeypatch.delenv("CBTBACKUP_PASSWORD")
    cli("full", "-r", repo, "--key-file", old_key, image).assert_one_line_error(5, "config is not the one")
    monkeypatch.setenv("CBTBACKUP_PASSWORD", PASSPHRASE)
    again = cli("upgrade", "-r", repo, "--json")
    assert again.code == 0 and again.json["upgraded"] is False and again.json["old_objects_removed"] == 0
    assert "private object names already" in cli("upgrade", "-r", repo).out


class Killed(Exception):
    pass


def kill_at(point: str) -> object:
    def hook(reached: str) -> None:
        if reached == point:
            raise Killed(point)
    return hook


def test_an_upgrade_killed_at_either_step_leaves_a_whole_repository(
    cli: RunCli, make_image: MakeImage, tmp_path: Path
) -> None:
    repo, _, points = version_one_repository(cli, make_image, tmp_path)
    before = cli("list", "-r", repo, "--json").json["backups"]

    def restores_all() -> None:
        assert cli("list", "-r", repo, "--json").json["backups"] == before
        for backup_id, data in points.items():
            out = tmp_path / "out.img"
            out.unlink(missing_ok=True)
            assert cli("restore", "-r", repo, backup_id, out).code == 0
            assert out.read_bytes() == data

    for point in ("copied", "committed"):
        opened = Repository.open(LocalStore(repo), str(repo), PASSPHRASE)
        with pytest.raises(Killed):
            run_upgrade(opened, hook=kill_at(point))  # type: ignore[arg-type]
        opened.locks.remove(everything=True)
        version = json.loads((repo / "config").read_bytes())["version"]
        assert version == (1 if point == "copied" else 2)
        restores_all()
        checked = cli("verify", "-r", repo, "--json")
        assert checked.code == 0 and ("old names" in checked.json["stale"]) == (point == "committed")
    leftovers = [k for k in stored(repo) if k.startswith(("backups/web", "backups/sqlvm", "heads/web"))]
    assert leftovers  # killed after its commit: the old keys are still there, unseen
    finished = cli("upgrade", "-r", repo, "--json").json
    assert finished["upgraded"] is False and finished["old_objects_removed"] >= len(leftovers)
    assert not [k for k in stored(repo) if k.startswith(("backups/web", "backups/sqlvm", "heads/web", "heads/sqlvm"))]
    restores_all()


def test_an_unencrypted_repository_is_refused(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    repo = tmp_path / "plain"
    cli("init", "-r", repo, "--encryption", "none")
    cli("full", "-r", repo, make_image(MiB), "--name", "vm")
    before = stored(repo)
    cli("upgrade", "-r", repo).assert_one_line_error(2, "not encrypted")
    assert stored(repo) == before
