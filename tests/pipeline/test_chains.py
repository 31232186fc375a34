"""Chains belong to one source: default names are unique per source and host, --name is guarded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cbtbackup.pipeline.backup import BackupOptions, run_backup
from cbtbackup.pipeline.chains import ChainOwnerError, default_name, legacy_name
from cbtbackup.pipeline.restore import RestoreOptions, run_restore
from cbtbackup.repo.config import RepositoryConfig
from cbtbackup.repo.local_store import LocalStore
from cbtbackup.repo.manifest import check_name
from cbtbackup.repo.repository import Repository
from tests.conftest import RunCli


def test_default_names_are_readable_stable_and_distinct() -> None:
    a = default_name("/srv/vm1/disk.img", "host1")
    assert a.startswith("srv-vm1-disk.img-") and a == default_name("/srv/vm1/disk.img", "host1")
    names = {a, default_name("/srv/vm2/disk.img", "host1"), default_name("/srv/vm1/disk.img", "host2"),
             default_name("/data/ä.img", "host1"), default_name("/data/ö.img", "host1"),
             default_name("/dev/mapper/vg-root", "host1"), default_name("/tmp/my disk (1).img", "host1")}
    assert len(names) == 7
    for name in names:
        assert check_name(name) == name
    long = default_name("/" + "x" * 300 + "/disk.img", "h")
    assert len(long) <= 128 and "disk.img" in long


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalStore(tmp_path / "repo"), str(tmp_path / "repo"), RepositoryConfig())


def test_same_file_name_and_non_ascii_names_get_separate_chains(tmp_path: Path, repo: Repository) -> None:
    sources = []
    for rel in ("vm1/disk.img", "vm2/disk.img", "ä.img", "ö.img"):
        path = tmp_path / rel
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(os.urandom(1 << 20))
        sources.append(path)
    results = [run_backup(repo, BackupOptions(str(p), "full", provider="scan")) for p in sources]
    assert len({r.manifest.ref.name for r in results}) == 4
    for path in sources:  # each incremental finds its own chain and restores its own source
        path.write_bytes(os.urandom(1 << 20))
        inc = run_backup(repo, BackupOptions(str(path), "incr", provider="scan"))
        assert inc.manifest.kind == "incr" and inc.manifest.source == str(path)
        target = tmp_path / f"restored-{inc.manifest.ref.id}.img"
        run_restore(repo, RestoreOptions(inc.manifest.ref.id, str(target)))
        assert target.read_bytes() == path.read_bytes()


def test_a_name_holding_another_source_is_refused_unless_renamed(tmp_path: Path, repo: Repository) -> None:
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    a.write_bytes(os.urandom(1 << 20))
    b.write_bytes(os.urandom(1 << 20))
    run_backup(repo, BackupOptions(str(a), "full", "vm", provider="scan"))
    with pytest.raises(ChainOwnerError, match=r"holds backups of .*a\.img"):
        run_backup(repo, BackupOptions(str(b), "incr", "vm", provider="scan"))
    with pytest.raises(ChainOwnerError):
        run_backup(repo, BackupOptions(str(b), "full", "vm", provider="scan"))
    assert len(repo.list_backups("vm")) == 1
    moved = run_backup(repo, BackupOptions(str(b), "incr", "vm", provider="scan", rename_source=True))
    assert moved.manifest.source == str(b) and moved.manifest.method == "scan"
    run_backup(repo, BackupOptions(str(b), "incr", "vm", provider="scan"))  # now b's chain


def test_chains_of_older_versions_keep_being_used(tmp_path: Path, repo: Repository) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(1 << 20))
    old = run_backup(repo, BackupOptions(str(image), "full", legacy_name(str(image)), provider="scan"))
    assert old.manifest.ref.name == "disk.img"
    inc = run_backup(repo, BackupOptions(str(image), "incr", provider="scan"))
    assert inc.manifest.ref.name == "disk.img" and inc.manifest.parent == old.manifest.ref
    other = tmp_path / "sub"
    other.mkdir()
    (other / "disk.img").write_bytes(os.urandom(1 << 20))
    fresh = run_backup(repo, BackupOptions(str(other / "disk.img"), "incr", provider="scan"))
    assert fresh.manifest.ref.name != "disk.img" and fresh.manifest.kind == "full"


def test_list_shows_source_and_host(cli: RunCli, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(1 << 20))
    cli("init", "-r", tmp_path / "repo")
    assert cli("full", "-r", tmp_path / "repo", image, "--provider", "scan").code == 0
    listed = cli("list", "-r", tmp_path / "repo", "--long")
    assert str(image) in listed.out and os.uname().nodename in listed.out
    row = cli("list", "-r", tmp_path / "repo", "--json").json["backups"][0]
    assert row["source"] == str(image) and row["host"] == os.uname().nodename
    refused = cli("full", "-r", tmp_path / "repo", tmp_path / "repo" / "config", "--name", row["name"])
    refused.assert_one_line_error(2, "--rename-source")
