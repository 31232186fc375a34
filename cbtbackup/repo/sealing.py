"""Sealing: what stands between the repository and the store, turning objects into opaque bytes.

The repository asks its sealer for two things: the id of a chunk (BLAKE3 of the plaintext — keyed with a
key derived from the master key in an encrypted repository, so ids reveal nothing and cannot be tested
against a guessed block) and sealed bytes for every object it stores. Stores move opaque bytes.

A sealed object (encrypted repositories):

    offset  size  field
    0       4     magic b"CBTS"
    4       1     format version (1)
    5       1     cipher: 1 = AES-256-GCM, 2 = ChaCha20-Poly1305
    6       2     reserved, zero
    8       24    salt, random per object
    32      ...   ciphertext, then the 16-byte tag

Each object is encrypted under its own key, BLAKE3(salt) keyed with the repository's sealing key, so a
fixed nonce is safe and no nonce can ever repeat under one key. The associated data is the object's key in
the store: an object moved, swapped or replayed under another name fails to open, as does one with any bit
changed or cut short.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import blake3

from cbtbackup.errors import CorruptDataError, UsageError

MAGIC = b"CBTS"
VERSION = 1
CIPHERS = {"aes-256-gcm": 1, "chacha20-poly1305": 2}
MODES = ("none", *CIPHERS)
_HEADER = struct.Struct("<4sBBH24s")
SALT_SIZE = 24
TAG_SIZE = 16
NONCE = bytes(12)  # every object has its own key


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UsageError(f"encryption {mode!r} is not one of: {', '.join(MODES)}")
    return mode


class PlainSealer:
    """An unencrypted repository: objects as they are, chunk ids the plain BLAKE3."""

    encrypted = False
    mode = "none"

    def seal(self, key: str, data: bytes) -> bytes:
        return data

    def open(self, key: str, sealed: bytes) -> bytes:
        return sealed

    def chunk_id(self, data: bytes | memoryview) -> bytes:
        # blake3 releases the GIL for large inputs, so hashing in a thread pool runs in parallel.
        return blake3.blake3(data).digest()

    def config_mac(self, body: bytes) -> str:
        # Not a MAC (anyone can recompute it): a checksum, so a flipped byte of an unencrypted config is
        # found and its copy used (repository.py). Configs of earlier versions have none and are not checked.
        return "blake3:" + blake3.blake3(body).hexdigest()


class AeadSealer:
    """An encrypted repository: every object authenticated and encrypted, chunk ids keyed."""

    encrypted = True

    def __init__(self, mode: str, master: bytes) -> None:
        if mode not in CIPHERS:
            raise UsageError(f"encryption {mode!r} is not one of: {', '.join(CIPHERS)}")
        self.mode = mode
        self._cipher_id = CIPHERS[mode]
        self._seal_key = blake3.blake3(master, derive_key_context="cbtbackup 2026-11 object sealing").digest()
        self._id_key = blake3.blake3(master, derive_key_context="cbtbackup 2026-11 chunk ids").digest()
        self._mac_key = blake3.blake3(master, derive_key_context="cbtbackup 2026-11 config mac").digest()
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305  # lazily: --help stays fast

        self._aead: Any = AESGCM if mode == "aes-256-gcm" else ChaCha20Poly1305

    def _object_key(self, salt: bytes) -> Any:
        return self._aead(blake3.blake3(salt, key=self._seal_key).digest())

    def seal(self, key: str, data: bytes) -> bytes:
        salt = os.urandom(SALT_SIZE)
        header = _HEADER.pack(MAGIC, VERSION, self._cipher_id, 0, salt)
        sealed: bytes = self._object_key(salt).encrypt(NONCE, data, _associated(key, header))
        return header + sealed

    def open(self, key: str, sealed: bytes) -> bytes:
        if len(sealed) < _HEADER.size + TAG_SIZE:
            raise CorruptDataError(f"{key} is not a sealed object (too short)")
        magic, version, cipher, _, salt = _HEADER.unpack_from(sealed)
        if magic != MAGIC or version != VERSION:
            raise CorruptDataError(f"{key} is not a sealed object of this version")
        if cipher != self._cipher_id:
            raise CorruptDataError(f"{key} is sealed with another cipher than the repository's")
        from cryptography.exceptions import InvalidTag

        header = sealed[:_HEADER.size]
        try:
            data: bytes = self._object_key(salt).decrypt(NONCE, memoryview(sealed)[_HEADER.size:],
                                                          _associated(key, header))
        except InvalidTag:
            raise CorruptDataError(f"{key} fails authentication (changed, cut, or not the object of this name)") \
                from None
        return data

    def chunk_id(self, data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=self._id_key).digest()

    def config_mac(self, body: bytes) -> str:
        return blake3.blake3(body, key=self._mac_key).hexdigest()


Sealer = PlainSealer | AeadSealer


def _associated(key: str, header: bytes) -> bytes:
    return b"cbtbackup object\0" + key.encode() + b"\0" + header
