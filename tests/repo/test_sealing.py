"""Sealing round trips for every object type and both ciphers, and what a sealed object withstands."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cbtbackup.errors import CorruptDataError
from cbtbackup.model.extent_map import ExtentMap
from cbtbackup.repo.config import RepositoryConfig
from cbtbackup.repo.keys import UnlockError
from cbtbackup.repo.local_store import LocalStore
from cbtbackup.repo.manifest import BackupRef, Manifest
from cbtbackup.repo.repository import Repository
from cbtbackup.repo.sealing import CIPHERS, AeadSealer, PlainSealer

PASSPHRASE = "a long and private passphrase"


@pytest.mark.parametrize("mode", list(CIPHERS))
def test_seal_and_open(mode: str) -> None:
    sealer = AeadSealer(mode, os.urandom(32))
    for data in (b"", b"x", os.urandom(1 << 20)):
        sealed = sealer.seal("chunks/ab/abcd", data)
        assert sealer.open("chunks/ab/abcd", sealed) == data
        assert data[:64] not in sealed[32:] or len(data) < 16  # a short plaintext may occur by chance
    sealed = sealer.seal("k", b"hello world" * 100)
    flipped = sealed[:50] + bytes([sealed[50] ^ 1]) + sealed[51:]
    for bad in (sealed[:-1], sealed[:40], flipped):
        with pytest.raises(CorruptDataError):
            sealer.open("k", bad)
    with pytest.raises(CorruptDataError, match="fails authentication"):
        sealer.open("another/key", sealed)  # moved or swapped under another name
    other = AeadSealer(mode, os.urandom(32))
    with pytest.raises(CorruptDataError):
        other.open("k", sealed)  # another repository's key


def test_chunk_ids_are_keyed() -> None:
    data = os.urandom(4096)
    a, b = AeadSealer("aes-256-gcm", os.urandom(32)), AeadSealer("aes-256-gcm", os.urandom(32))
    assert a.chunk_id(data) == a.chunk_id(data) != b.chunk_id(data)
    assert a.chunk_id(data) != PlainSealer().chunk_id(data)


@pytest.mark.parametrize("mode", list(CIPHERS))
def test_every_object_type_round_trips(tmp_path: Path, mode: str) -> None:
    store = LocalStore(tmp_path / "repo")
    (tmp_path / "repo").mkdir()
    repo = Repository.init(store, str(tmp_path / "repo"), RepositoryConfig(encryption=mode), PASSPHRASE)
    data = os.urandom(300_000)
    digest = repo.chunk_id(data)
    repo.put_chunk_object(digest, repo.codec.encode(data, digest))
    extents = ExtentMap()
    extents.append(0, len(data), digest)
    manifest = Manifest(BackupRef.new("vm"), "full", "full", None, 1.0, "/src", "scan", len(data), 1 << 20,
                        extents.map_digest(), extents)
    repo.save_manifest(manifest)
    with repo.locks.acquire("test", exclusive=("chain:vm",)):
        again = Repository.open(store, str(tmp_path / "repo"), PASSPHRASE)
        assert [lock.command for lock in again.locks.read_all()] == ["test"]  # locks
    assert again.get_chunk(digest) == data  # chunks
    assert again.latest("vm") == manifest.ref  # heads
    assert again.load_manifest(manifest.ref).extents == extents  # manifests
    assert again.config.encryption == mode and again.key_slot is not None  # config, key slots
    for path in (tmp_path / "repo").rglob("*"):
        if path.is_file() and path.name not in ("config", "config.copy") and "keys" not in path.parts:
            assert path.read_bytes()[:4] == b"CBTS", path  # every other object is sealed


def test_unlocking(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    store = LocalStore(tmp_path / "repo")
    Repository.init(store, "r", RepositoryConfig(encryption="chacha20-poly1305"), PASSPHRASE)
    with pytest.raises(UnlockError, match="wrong passphrase"):
        Repository.open(store, "r", "not it")
    with pytest.raises(UnlockError, match="encrypted: give its passphrase"):
        Repository.open(store, "r", lambda: None)
    asked = []

    def ask() -> str:
        asked.append(1)
        return PASSPHRASE

    Repository.open(store, "r", ask)
    assert asked == [1]
    plain = tmp_path / "plain"
    plain.mkdir()
    Repository.init(LocalStore(plain), "p", RepositoryConfig())
    Repository.open(LocalStore(plain), "p", lambda: pytest.fail("a plaintext repository asks for no passphrase"))
