"""The repository: init and open rules, manifests, finding backups, resolving chains."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from cbtbackup.errors import CorruptDataError, NotFoundError, UsageError
from cbtbackup.model.checkpoint import CbtCheckpoint
from cbtbackup.model.extent_map import ExtentMap, overlay
from cbtbackup.repo.config import RepositoryConfig, UnsupportedVersionError
from cbtbackup.repo.local_store import LocalStore
from cbtbackup.repo.location import open_repository, open_store
from cbtbackup.repo.manifest import BackupRef, Manifest
from cbtbackup.repo.repository import AmbiguousBackupError, Repository


def new_repo(tmp_path: Path) -> Repository:
    loc = str(tmp_path / "repo")
    return Repository.init(open_store(loc, create=True), loc, RepositoryConfig(chunk_size=64 << 10))


def manifest(ref: BackupRef, extents: ExtentMap, parent: Manifest | None, resolved: ExtentMap) -> Manifest:
    return Manifest(ref=ref, kind="incr" if parent else "full", method="scan", parent=parent.ref if parent else None,
                    created=0.0, source="/x", provider="scan", device_size=100, chunk_size=64 << 10,
                    map_digest=resolved.map_digest(), extents=extents,
                    cbt=CbtCheckpoint(uuid.UUID(int=5), 3, 65536, 100))


def test_init_refuses_existing_and_non_empty(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    with pytest.raises(UsageError, match="repository already"):
        Repository.init(repo.store, repo.location, RepositoryConfig())
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        Repository.init(LocalStore(other), str(other), RepositoryConfig())


def test_open_refuses_what_is_not_a_repository(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no repository at"):
        open_repository(str(tmp_path / "missing"))
    with pytest.raises(NotFoundError, match="not a cbtbackup repository"):
        open_repository(str(tmp_path))
    (tmp_path / "config").write_text('{"some": "other tool"}')
    with pytest.raises(CorruptDataError, match="not a cbtbackup repository"):
        open_repository(str(tmp_path))


def test_future_version_is_refused(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    cfg = json.loads(repo.store.get("config"))
    cfg["version"] = 99
    repo.store.put("config", json.dumps(cfg).encode())
    with pytest.raises(UnsupportedVersionError, match="version 99"):
        open_repository(repo.location)


def test_config_round_trip_and_limits(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    again = open_repository(repo.location)
    assert again.config == repo.config
    for bad in (1000, 32 << 10, 32 << 20):
        with pytest.raises(UsageError, match="power of two"):
            RepositoryConfig(chunk_size=bad)


def test_chain_resolution_and_lookup(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    full_map = ExtentMap()
    full_map.append(0, 100, b"\x01" * 32)
    full = manifest(BackupRef("vm", "20260101T000000000000Z", "aaaa1111"), full_map, None, full_map)
    repo.save_manifest(full)
    inc_map = ExtentMap()
    inc_map.append(10, 10, b"\x02" * 32)
    resolved = overlay(inc_map, full_map)
    inc = manifest(BackupRef("vm", "20260102T000000000000Z", "aaaa2222"), inc_map, full, resolved)
    repo.save_manifest(inc)
    other = manifest(BackupRef("db", "20260103T000000000000Z", "bbbb3333"), full_map, None, full_map)
    repo.save_manifest(other)

    fresh = open_repository(repo.location)  # no cache: everything from the store
    assert [r.id for r in fresh.list_backups()] == ["bbbb3333", "aaaa1111", "aaaa2222"]
    assert fresh.find("aaaa2").id == "aaaa2222"
    assert fresh.find("vm@latest").id == "aaaa2222"
    assert fresh.find("bbbb3333").id == "bbbb3333"
    with pytest.raises(AmbiguousBackupError, match="matches 2"):
        fresh.find("aaaa")
    with pytest.raises(AmbiguousBackupError, match="NAME@latest"):
        fresh.find("latest")
    with pytest.raises(NotFoundError):
        fresh.find("cccc")
    with pytest.raises(NotFoundError):
        fresh.find("nobody@latest")
    top, got = fresh.resolve(fresh.find("aaaa2"))
    assert top.ref.id == "aaaa2222" and got == resolved
    loaded = fresh.load_manifest(inc.ref)
    assert loaded.cbt == inc.cbt and loaded.parent == full.ref


def test_a_damaged_chain_is_detected(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    full_map = ExtentMap()
    full_map.append(0, 100, b"\x01" * 32)
    wrong = ExtentMap()
    wrong.append(0, 100, b"\x09" * 32)
    m = manifest(BackupRef("vm", "20260101T000000000000Z", "dddd"), full_map, None, wrong)
    repo.save_manifest(m)
    with pytest.raises(CorruptDataError, match="does not match"):
        open_repository(repo.location).resolve(m.ref)
    raw = bytearray(repo.store.get(m.ref.key))
    raw[30] ^= 1
    repo.store.put(m.ref.key, bytes(raw))
    with pytest.raises(CorruptDataError, match="checksum"):
        open_repository(repo.location).load_manifest(m.ref)
