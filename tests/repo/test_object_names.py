"""Private object names in the repository layer: logical keys above, keys without names or times below, and
every way back from what the store holds."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cbtbackup.errors import CorruptDataError
from cbtbackup.model.extent_map import ExtentMap
from cbtbackup.repo.config import PRIVATE_NAMES_VERSION, RepositoryConfig
from cbtbackup.repo.local_store import LocalStore
from cbtbackup.repo.manifest import BackupRef, Manifest
from cbtbackup.repo.object_names import PrivateNames
from cbtbackup.repo.repository import Repository

PASSPHRASE = "a long and private passphrase"
PRIVATE = RepositoryConfig(encryption="chacha20-poly1305", names="private", version=PRIVATE_NAMES_VERSION)


def backup(repo: Repository, chain: str, data: bytes, ref: BackupRef | None = None) -> Manifest:
    digest = repo.chunk_id(data)
    repo.put_chunk_object(digest, repo.codec.encode(data, digest))
    extents = ExtentMap()
    extents.append(0, len(data), digest)
    manifest = Manifest(ref or BackupRef.new(chain), "full", "full", None, 1.0, f"/src/{chain}", "scan", len(data),
                        1 << 20, extents.map_digest(), extents)
    repo.save_manifest(manifest)
    return manifest


def stored(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_logical_keys_map_to_keys_with_no_name_or_time_and_back() -> None:
    names = PrivateNames(os.urandom(32))
    ref = BackupRef.new("db01-sda")
    twin = BackupRef("db01-sda", ref.stamp, os.urandom(8).hex())  # the same microsecond, another backup
    physical = names.physical(ref.key)
    assert "db01" not in physical and ref.stamp[:8] not in physical
    assert physical.startswith(f"backups/{names.tag('db01-sda')}/") and len(physical) == len("backups/") + 65
    assert names.physical(twin.key) != physical
    assert names.physical(ref.key) == physical  # the same every time: a parent's key is found again
    leaf = physical.rsplit("/", 1)[1]
    assert names.logical_leaf("db01-sda", leaf) == f"{ref.stamp}_{ref.id}"
    assert names.logical_leaf("db02-sda", leaf).startswith("%")  # another chain's key gives no backup
    assert names.physical("heads/db01-sda") == f"heads/{names.tag('db01-sda')}"
    assert names.physical("quarantine/" + ref.key) == "quarantine/" + physical
    for key in ("config", "chunks/ab/ab12", "keys/0011", "locks/0022", "quarantine/chunks/ab/ab12.missing"):
        assert names.physical(key) == key
    assert PrivateNames(os.urandom(32)).physical(ref.key) != physical  # another repository's names key


def test_a_private_repository_lists_reads_and_finds_its_backups(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    repo = Repository.init(LocalStore(root), str(root), PRIVATE, PASSPHRASE)
    first = backup(repo, "web-host-vda", os.urandom(100_000))
    second = backup(repo, "web-host-vda", os.urandom(100_000))
    other = backup(repo, "db-host-sdb", os.urandom(50_000))
    assert not [k for k in stored(root) if "host" in k or first.ref.stamp[:8] in k]
    reader = Repository.open(LocalStore(root), str(root), PASSPHRASE)  # a new process: nothing learned yet
    assert reader.list_backups() == sorted([first.ref, second.ref, other.ref], key=lambda r: (r.name, r.stamp))
    assert reader.list_backups("web-host-vda") == [first.ref, second.ref]
    assert reader.latest("web-host-vda") == second.ref
    assert reader.find(other.ref.id[:6]) == other.ref
    assert reader.load_manifest(first.ref).source == "/src/web-host-vda"
    assert {o.key for o in reader.store.list("heads/")} == {"heads/web-host-vda", "heads/db-host-sdb"}

    # Without heads, a chain's name comes from one of its manifests.
    shutil.rmtree(root / "heads")
    again = Repository.open(LocalStore(root), str(root), PASSPHRASE)
    assert again.list_backups() == reader.list_backups()
    again.delete_manifest(first.ref)
    assert Repository.open(LocalStore(root), str(root), PASSPHRASE).list_backups("web-host-vda") == [second.ref]


def test_an_object_renamed_in_the_store_does_not_open(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    repo = Repository.init(LocalStore(root), str(root), PRIVATE, PASSPHRASE)
    old = backup(repo, "vm1", os.urandom(10_000))
    new = backup(repo, "vm1", os.urandom(10_000))
    assert repo.private_names is not None
    old_path, new_path = (root / repo.private_names.names.physical(m.ref.key) for m in (old, new))
    new_path.write_bytes(old_path.read_bytes())  # an attacker rolls the newest backup back to the older one
    reader = Repository.open(LocalStore(root), str(root), PASSPHRASE)
    with pytest.raises(CorruptDataError, match="fails authentication"):
        reader.load_manifest(new.ref)


def test_what_no_key_names_stays_visible_and_removable_but_is_no_backup(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    repo = Repository.init(LocalStore(root), str(root), PRIVATE, PASSPHRASE)
    kept = backup(repo, "vm1", os.urandom(10_000))
    stray = root / "backups" / ("ab" * 16) / ("cd" * 16)
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"not a manifest")
    reader = Repository.open(LocalStore(root), str(root), PASSPHRASE)
    assert reader.list_backups() == [kept.ref]
    listed = [o.key for o in reader.store.list("backups/")]
    assert f"backups/%{'ab' * 16}/%{'cd' * 16}" in listed
    reader.store.delete(f"backups/%{'ab' * 16}/%{'cd' * 16}")
    assert not stray.exists()


def test_a_config_with_private_names_and_no_encryption_is_refused() -> None:
    with pytest.raises(CorruptDataError, match="encrypted"):
        RepositoryConfig(names="private", version=PRIVATE_NAMES_VERSION)
    with pytest.raises(CorruptDataError, match="version"):
        RepositoryConfig(encryption="aes-256-gcm", names="private", version=1)
