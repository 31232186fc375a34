"""Write-only host keys: a key with which a host backs up into an encrypted repository but reads nothing.

Two hundred hosts backing up into one bucket should not each hold the key that reads every backup. A
write-only key file holds what writing needs and nothing that reading needs:

- the repository's X25519 **public** key: every object the host writes is sealed to it (form 2 of
  ``sealing.py``): the host's process makes a new X25519 key, agrees a sealing key with the repository's
  key through HKDF-SHA256, and forgets its private half when it exits. Only the master key's holder can
  compute the agreement again, so not even the host can open what it wrote once its process is gone;
- the **chunk-id key**, so that what it stores deduplicates with every other backup (a chunk's object name
  is its keyed BLAKE3; whoever holds this key can test whether a guessed block is stored, which is what
  deduplication across hosts costs);
- the **lock key**, so that it can take its chain's lock and see the locks it must wait for;
- the **names key**, so that it names its chains' objects as private names ask (``object_names.py``);
- a digest of the repository's config, which it cannot check against the config's MAC;
- a **host secret**, random, that seals what the host keeps of its own backups (``host_state.py``).

It has no key slot and no master key: it opens no chunk, manifest, head or key slot. ``WriteOnlySealer``
refuses to open anything with :class:`WriteOnlyError` (exit 13), one line that says what needs a full key.

The repository's X25519 key is derived from the master key, so every encrypted repository has one and no
format changes for those that never use it; the other side is that a write-only key cannot be revoked
alone (see docs/encryption.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import blake3

from cbtbackup.errors import CbtError, CorruptDataError
from cbtbackup.repo.sealing import (
    CIPHERS,
    PUBLIC_KEY_SIZE,
    SALT_SIZE,
    AeadSealer,
    KeySealer,
    aead_class,
    public_header,
    seal_under,
    session_key,
)

FORMAT = "cbtbackup-write-only-key"
KEY_SIZE = 32


class WriteOnlyError(CbtError):
    """The repository was opened with a write-only key, and this needs to read it."""

    exit_code = 13


@dataclasses.dataclass(frozen=True)
class WriteOnlyKey:
    """A write-only key file read and checked."""

    path: str
    id: str
    repository: str
    cipher: str
    public: bytes
    chunk_ids: bytes = dataclasses.field(repr=False)
    locks: bytes = dataclasses.field(repr=False)
    host_secret: bytes = dataclasses.field(repr=False)
    config_digest: str = ""
    names: bytes = dataclasses.field(default=b"", repr=False)  # empty in files made before private names

    @property
    def state_dir(self) -> Path:
        """Where the host keeps its record of its own backups: beside the key file, owned like it."""
        key = Path(self.path)
        return key.with_name(key.name + ".state")


def config_digest(body_for_mac: bytes) -> str:
    return blake3.blake3(body_for_mac).hexdigest()


def checksum(fields: dict[str, Any]) -> str:
    return blake3.blake3(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_only_fields(repository: str, sealer: AeadSealer, digest: str) -> dict[str, Any]:
    """What a new write-only key file holds (made by a holder of the master key)."""
    return {"format": FORMAT, "version": 1, "id": os.urandom(8).hex(), "repository": repository,
            "created": time.time(), "host": os.uname().nodename, "cipher": sealer.mode,
            "public": sealer.public_key().hex(), "chunk_ids": sealer.id_key.hex(), "locks": sealer.lock_key.hex(),
            "names": sealer.names_key.hex(), "host_secret": os.urandom(KEY_SIZE).hex(), "config": digest}


def parse_write_only_key(path: str, fields: dict[str, Any]) -> WriteOnlyKey:
    """Check a write-only key file's fields (``checksum`` still among them): one line for each way it fails."""
    given = fields.pop("checksum", None)
    if fields.get("version") != 1:
        raise CbtError(f"the write-only key file {path} has an unknown version; this cbtbackup cannot use it")
    raw: dict[str, bytes] = {}
    for name in ("public", "chunk_ids", "locks", "host_secret", "names"):
        if name == "names" and name not in fields:
            continue
        try:
            raw[name] = bytes.fromhex(str(fields[name]))
        except (KeyError, ValueError):
            raise CorruptDataError(f"the write-only key file {path} is damaged: its {name} key is missing or not "
                                   "hex") from None
        if len(raw[name]) != (PUBLIC_KEY_SIZE if name == "public" else KEY_SIZE):
            raise CorruptDataError(f"the write-only key file {path} is damaged: its {name} key is {len(raw[name])} "
                                   f"bytes, not {KEY_SIZE} (cut short?)")
    if checksum(fields) != given:
        raise CorruptDataError(f"the write-only key file {path} is damaged or was edited (its checksum does not "
                               "match)")
    cipher = str(fields.get("cipher"))
    if cipher not in CIPHERS:
        raise CorruptDataError(f"the write-only key file {path} names an unknown cipher {cipher!r}")
    return WriteOnlyKey(path, str(fields["id"]), str(fields["repository"]), cipher, raw["public"], raw["chunk_ids"],
                        raw["locks"], raw["host_secret"], str(fields.get("config", "")),
                        raw.get("names", b""))


class WriteOnlySealer:
    """Seals every object to the repository's public key; opens nothing."""

    encrypted = True
    can_read = False

    def __init__(self, key: WriteOnlyKey) -> None:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

        self.mode = key.cipher
        self._key = key
        self._aead: Any = aead_class(key.cipher)
        try:
            repository = X25519PublicKey.from_public_bytes(key.public)
        except ValueError:
            raise CorruptDataError(f"the write-only key file {key.path} holds no valid public key") from None
        # One key pair for this process: its private half never leaves memory.
        mine = X25519PrivateKey.generate()
        self._writer = bytes(mine.public_key().public_bytes_raw())
        try:
            shared = mine.exchange(repository)
        except ValueError:  # a low-order point: not a repository's key
            raise CorruptDataError(f"the write-only key file {key.path} holds no valid public key") from None
        self._seal_key = session_key(shared, self._writer, key.public)

    def seal(self, key: str, data: bytes) -> bytes:
        salt = os.urandom(SALT_SIZE)
        header = public_header(self.mode, self._writer, salt)
        return header + seal_under(self._aead, self._seal_key, salt, key, header, data)

    def open(self, key: str, sealed: bytes) -> bytes:
        raise WriteOnlyError(f"{key} cannot be read with the write-only key {self._key.path}: reading backups "
                             "(restore, mount, list, verify, forget, prune) needs a passphrase or a full key file")

    @property
    def names_key(self) -> bytes:
        return self._key.names

    def chunk_id(self, data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=self._key.chunk_ids).digest()

    def config_mac(self, body: bytes) -> str:
        raise WriteOnlyError("a write-only key cannot make a config's MAC")

    def lock_sealer(self) -> KeySealer:
        return KeySealer(self.mode, self._key.locks)
