"""Write-only keys in the repository layer: what they seal opens only with the master key, and every read
with them fails with WriteOnlyError."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cbtbackup.errors import CorruptDataError
from cbtbackup.model.extent_map import ExtentMap
from cbtbackup.repo.config import RepositoryConfig
from cbtbackup.repo.key_file import read_key_file
from cbtbackup.repo.local_store import LocalStore
from cbtbackup.repo.manifest import BackupRef, Manifest
from cbtbackup.repo.repository import Repository
from cbtbackup.repo.sealing import CIPHERS, AeadSealer
from cbtbackup.repo.write_only import WriteOnlyError, WriteOnlyKey, WriteOnlySealer, write_only_fields

PASSPHRASE = "a long and private passphrase"


def write_only_of(sealer: AeadSealer) -> WriteOnlyKey:
    fields = write_only_fields("repo-id", sealer, "")
    return WriteOnlyKey("k", fields["id"], "repo-id", sealer.mode, sealer.public_key(), sealer.id_key,
                        sealer.lock_key, os.urandom(32))


@pytest.mark.parametrize("mode", list(CIPHERS))
def test_sealed_to_the_public_key_opens_with_the_master_key_alone(mode: str) -> None:
    master = os.urandom(32)
    full = AeadSealer(mode, master)
    writer = WriteOnlySealer(write_only_of(full))
    data = os.urandom(100_000)
    sealed = writer.seal("chunks/ab/abcd", data)
    assert data[:64] not in sealed
    assert AeadSealer(mode, master).open("chunks/ab/abcd", sealed) == data  # a fresh reader: no shared state
    with pytest.raises(WriteOnlyError, match="write-only"):
        writer.open("chunks/ab/abcd", sealed)  # not even what it wrote itself
    with pytest.raises(CorruptDataError):
        AeadSealer(mode, os.urandom(32)).open("chunks/ab/abcd", sealed)  # another repository
    with pytest.raises(CorruptDataError, match="fails authentication"):
        full.open("chunks/ab/other", sealed)  # moved under another name
    for at in (10, 45, len(sealed) - 1):  # the writer's key, the salt, the tag
        flipped = sealed[:at] + bytes([sealed[at] ^ 1]) + sealed[at + 1:]
        with pytest.raises(CorruptDataError):
            full.open("chunks/ab/abcd", flipped)
    other_process = WriteOnlySealer(write_only_of(full))
    assert other_process.seal("k", b"x")[8:40] != writer.seal("k", b"x")[8:40]  # a key pair per process
    assert writer.chunk_id(data) == full.chunk_id(data)  # deduplicates with everything else


def test_a_write_only_repository_reads_nothing(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    store = LocalStore(root)
    repo = Repository.init(store, str(root), RepositoryConfig(encryption="aes-256-gcm"), PASSPHRASE)
    data = os.urandom(200_000)
    digest = repo.chunk_id(data)
    repo.put_chunk_object(digest, repo.codec.encode(data, digest))
    extents = ExtentMap()
    extents.append(0, len(data), digest)
    other = Manifest(BackupRef.new("other-host"), "full", "full", None, 1.0, "/src", "scan", len(data), 1 << 20,
                     extents.map_digest(), extents)
    repo.save_manifest(other)
    repo.write_only_key(str(tmp_path / "host.key"))
    key = read_key_file(tmp_path / "host.key")
    assert isinstance(key, WriteOnlyKey)
    host = Repository.open(LocalStore(root), str(root), key)
    assert not host.can_read
    with pytest.raises(WriteOnlyError):
        host.get_chunk(digest)
    with pytest.raises(WriteOnlyError):
        host.load_manifest(other.ref)
    with pytest.raises(WriteOnlyError):
        host.head_of("other-host")
    assert host.latest("other-host") is None  # another chain: this host never wrote it
    assert "keeps no record" in host.why_no_latest("other-host")
    with pytest.raises(WriteOnlyError):
        host.require_full_key("prune")
    # What the host writes, the full key reads.
    mine = Manifest(BackupRef.new("this-host"), "full", "full", None, 2.0, "/mine", "scan", len(data), 1 << 20,
                    extents.map_digest(), extents)
    host.save_manifest(mine, resolved=extents)
    reader = Repository.open(LocalStore(root), str(root), PASSPHRASE)
    assert reader.load_manifest(mine.ref).source == "/mine"
    assert reader.head_of("this-host") == mine.ref
    again = Repository.open(LocalStore(root), str(root), key)  # the host's next run finds its record
    assert again.latest("this-host") == mine.ref
    assert again.resolve(mine.ref)[1] == extents
