"""Sealing: what stands between the repository and the store, turning objects into opaque bytes.

The repository asks its sealer for two things: the id of a chunk (BLAKE3 of the plaintext — keyed with a
key derived from the master key in an encrypted repository, so ids reveal nothing and cannot be tested
against a guessed block) and sealed bytes for every object it stores. Stores move opaque bytes.

A sealed object (encrypted repositories) starts with the same eight bytes in both of its forms:

    offset  size  field
    0       4     magic b"CBTS"
    4       1     form: 1 = sealed with the repository's key, 2 = sealed to the repository's public key
    5       1     cipher: 1 = AES-256-GCM, 2 = ChaCha20-Poly1305
    6       2     reserved, zero

Form 1, written by whoever holds the master key:

    8       24    salt, random per object
    32      ...   ciphertext, then the 16-byte tag

Each object is encrypted under its own key, BLAKE3(salt) keyed with the repository's sealing key, so a
fixed nonce is safe and no nonce can ever repeat under one key.

Form 2, written by a host with a write-only key (``write_only.py``), which can seal but never open:

    8       32    the writer's X25519 public key, new for every process
    40      24    salt, random per object
    64      ...   ciphertext, then the 16-byte tag

The writer's key agreed with the repository's X25519 key (derived from the master key) gives, through
HKDF-SHA256, a sealing key of that process; each object is then encrypted as in form 1. Only a holder of
the master key can compute the agreement again; the writer forgets its private half when it exits.

In both forms the associated data is the object's key in the store and the header: an object moved,
swapped or replayed under another name fails to open, as does one with any bit changed or cut short.
"""

from __future__ import annotations

import os
import struct
import threading
from typing import Any

import blake3

from cbtbackup.errors import CorruptDataError, UsageError

MAGIC = b"CBTS"
SEALED_WITH_KEY = 1
SEALED_TO_PUBLIC_KEY = 2
CIPHERS = {"aes-256-gcm": 1, "chacha20-poly1305": 2}
MODES = ("none", *CIPHERS)
_PREFIX = struct.Struct("<4sBBH")
_HEADER = struct.Struct("<4sBBH24s")
_PUBLIC_HEADER = struct.Struct("<4sBBH32s24s")
SALT_SIZE = 24
TAG_SIZE = 16
PUBLIC_KEY_SIZE = 32
NONCE = bytes(12)  # every object has its own key
# What each key of an encrypted repository is derived from its master key for (BLAKE3's derive_key).
SEALING_CONTEXT = "cbtbackup 2026-11 object sealing"
CHUNK_ID_CONTEXT = "cbtbackup 2026-11 chunk ids"
CONFIG_MAC_CONTEXT = "cbtbackup 2026-11 config mac"
LOCK_CONTEXT = "cbtbackup 2026-12 lock sealing"
PRIVATE_KEY_CONTEXT = "cbtbackup 2026-12 repository x25519 key"
NAMES_CONTEXT = "cbtbackup 2026-12 object names"
HKDF_INFO = b"cbtbackup 2026-12 sealed to the repository"


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UsageError(f"encryption {mode!r} is not one of: {', '.join(MODES)}")
    return mode


def derive(master: bytes, context: str) -> bytes:
    return blake3.blake3(master, derive_key_context=context).digest()


def aead_class(mode: str) -> Any:
    if mode not in CIPHERS:
        raise UsageError(f"encryption {mode!r} is not one of: {', '.join(CIPHERS)}")
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305  # lazily: --help stays fast

    return AESGCM if mode == "aes-256-gcm" else ChaCha20Poly1305


def session_key(shared: bytes, writer_public: bytes, repository_public: bytes) -> bytes:
    """The sealing key of one writer's process, from its X25519 agreement with the repository's key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key: bytes = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                      info=HKDF_INFO + writer_public + repository_public).derive(shared)
    return key


class PlainSealer:
    """An unencrypted repository: objects as they are, chunk ids the plain BLAKE3."""

    encrypted = False
    can_read = True
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

    def lock_sealer(self) -> PlainSealer:
        return self


class KeySealer:
    """Form 1: seal and open with one symmetric key (every object of a full key's writer; every lock)."""

    encrypted = True
    can_read = True

    def __init__(self, mode: str, seal_key: bytes) -> None:
        self._aead: Any = aead_class(mode)
        self.mode = mode
        self._cipher_id = CIPHERS[mode]
        self._seal_key = seal_key

    def seal(self, key: str, data: bytes) -> bytes:
        salt = os.urandom(SALT_SIZE)
        header = _HEADER.pack(MAGIC, SEALED_WITH_KEY, self._cipher_id, 0, salt)
        return header + seal_under(self._aead, self._seal_key, salt, key, header, data)

    def open(self, key: str, sealed: bytes) -> bytes:
        form = self._form(key, sealed)
        if form != SEALED_WITH_KEY or len(sealed) < _HEADER.size + TAG_SIZE:
            raise CorruptDataError(f"{key} is not a sealed object of this kind")
        salt = _HEADER.unpack_from(sealed)[4]
        return open_under(self._aead, self._seal_key, salt, key, sealed, _HEADER.size)

    def _form(self, key: str, sealed: bytes) -> int:
        if len(sealed) < _PREFIX.size + TAG_SIZE:
            raise CorruptDataError(f"{key} is not a sealed object (too short)")
        magic, form, cipher, _ = _PREFIX.unpack_from(sealed)
        if magic != MAGIC or form not in (SEALED_WITH_KEY, SEALED_TO_PUBLIC_KEY):
            raise CorruptDataError(f"{key} is not a sealed object of this version")
        if cipher != self._cipher_id:
            raise CorruptDataError(f"{key} is sealed with another cipher than the repository's")
        return int(form)


class AeadSealer(KeySealer):
    """An encrypted repository opened with its master key: every object authenticated and encrypted, chunk
    ids keyed; objects that write-only hosts sealed to the repository's public key open too."""

    def __init__(self, mode: str, master: bytes) -> None:
        super().__init__(mode, derive(master, SEALING_CONTEXT))
        self._id_key = derive(master, CHUNK_ID_CONTEXT)
        self._mac_key = derive(master, CONFIG_MAC_CONTEXT)
        self.lock_key = derive(master, LOCK_CONTEXT)
        self.names_key = derive(master, NAMES_CONTEXT)  # private object names (object_names.py)
        self._private_bytes = derive(master, PRIVATE_KEY_CONTEXT)
        self._private: Any = None
        self._sessions: dict[bytes, bytes] = {}  # writer's public key -> its sealing key
        self._sessions_lock = threading.Lock()

    @property
    def id_key(self) -> bytes:
        return self._id_key

    def public_key(self) -> bytes:
        """The repository's X25519 public key: what write-only hosts seal to."""
        return bytes(self._x25519().public_key().public_bytes_raw())

    def _x25519(self) -> Any:
        if self._private is None:
            from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

            self._private = X25519PrivateKey.from_private_bytes(self._private_bytes)
        return self._private

    def open(self, key: str, sealed: bytes) -> bytes:
        if self._form(key, sealed) == SEALED_WITH_KEY:
            return super().open(key, sealed)
        if len(sealed) < _PUBLIC_HEADER.size + TAG_SIZE:
            raise CorruptDataError(f"{key} is not a sealed object (too short)")
        _, _, _, _, writer, salt = _PUBLIC_HEADER.unpack_from(sealed)
        return open_under(self._aead, self._session_key(writer), salt, key, sealed, _PUBLIC_HEADER.size)

    def _session_key(self, writer: bytes) -> bytes:
        with self._sessions_lock:
            known = self._sessions.get(writer)
        if known is not None:
            return known
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

        private = self._x25519()
        try:
            shared = private.exchange(X25519PublicKey.from_public_bytes(writer))
        except ValueError:  # a low-order point: no writer made it
            raise CorruptDataError("an object names a writer key that no writer can have") from None
        derived = session_key(shared, writer, bytes(private.public_key().public_bytes_raw()))
        with self._sessions_lock:
            if len(self._sessions) > 4096:
                self._sessions.clear()
            self._sessions[writer] = derived
        return derived

    def chunk_id(self, data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=self._id_key).digest()

    def config_mac(self, body: bytes) -> str:
        return blake3.blake3(body, key=self._mac_key).hexdigest()

    def lock_sealer(self) -> KeySealer:
        return KeySealer(self.mode, self.lock_key)


def seal_under(aead: Any, seal_key: bytes, salt: bytes, key: str, header: bytes, data: bytes) -> bytes:
    sealed: bytes = aead(blake3.blake3(salt, key=seal_key).digest()).encrypt(NONCE, data, _associated(key, header))
    return sealed


def open_under(aead: Any, seal_key: bytes, salt: bytes, key: str, sealed: bytes, header_size: int) -> bytes:
    from cryptography.exceptions import InvalidTag

    try:
        data: bytes = aead(blake3.blake3(salt, key=seal_key).digest()).decrypt(
            NONCE, memoryview(sealed)[header_size:], _associated(key, sealed[:header_size]))
    except InvalidTag:
        raise CorruptDataError(f"{key} fails authentication (changed, cut, or not the object of this name)") \
            from None
    return data


def public_header(cipher: str, writer: bytes, salt: bytes) -> bytes:
    return _PUBLIC_HEADER.pack(MAGIC, SEALED_TO_PUBLIC_KEY, CIPHERS[cipher], 0, writer, salt)


def _associated(key: str, header: bytes) -> bytes:
    return b"cbtbackup object\0" + key.encode() + b"\0" + header
