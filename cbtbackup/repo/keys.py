"""Key slots: the repository's random master key, stored only wrapped, once per passphrase.

``keys/<id>`` is JSON: the slot's id, the Argon2id parameters and salt, the master key encrypted
(AES-256-GCM) under the key Argon2id derives from a passphrase, and when and on which host the slot was
made, encrypted under a key derived from the master key (slots of earlier versions hold those two in
plaintext: a bucket reader learned a host name from them). The associated data
binds the wrapped key to this repository's id, the slot's id and its parameters, so a slot copied from
another repository, or one whose parameters were edited, does not open. A BLAKE3 checksum over the slot
tells an edited or damaged slot from a wrong passphrase. Losing every passphrase loses the repository.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import blake3

from cbtbackup.errors import CbtError, CorruptDataError, NotFoundError, UsageError

KEYS_PREFIX = "keys/"
FORMAT = "cbtbackup-key"
ARGON2 = {"iterations": 3, "memory_kib": 64 * 1024, "lanes": 4}  # about 0.1 s and 64 MiB here
MASTER_SIZE = 32
ABOUT_CONTEXT = "cbtbackup 2026-12 key slot about"


class UnlockError(CbtError):
    """No key slot opens with the passphrase given (or none was given)."""

    exit_code = 12


@dataclasses.dataclass(frozen=True)
class SlotInfo:
    id: str
    created: float
    host: str
    kdf: str


def _kek(passphrase: str, kdf: dict[str, Any]) -> bytes:
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

    derived: bytes = Argon2id(salt=bytes.fromhex(kdf["salt"]), length=32, iterations=int(kdf["iterations"]),
                              lanes=int(kdf["lanes"]), memory_cost=int(kdf["memory_kib"])).derive(passphrase.encode())
    return derived


def _canonical(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def _associated(repo_id: str, slot_id: str, kdf: dict[str, Any]) -> bytes:
    return b"cbtbackup key slot\0" + repo_id.encode() + b"\0" + slot_id.encode() + b"\0" + _canonical(kdf)


def _about_associated(repo_id: str, slot_id: str) -> bytes:
    return b"cbtbackup key slot about\0" + repo_id.encode() + b"\0" + slot_id.encode()


class KeySlots:
    def __init__(self, store: Any, repo_id: str, master: bytes | None = None) -> None:
        self.store = store
        self.repo_id = repo_id
        self._master = master  # opens what the slots say about themselves (None: shown as unknown)

    def _about_key(self, master: bytes) -> bytes:
        return blake3.blake3(master, derive_key_context=ABOUT_CONTEXT).digest()

    def add(self, passphrase: str, master: bytes) -> str:
        """Wrap ``master`` under ``passphrase`` in a new slot; its id."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if not passphrase:
            raise UsageError("an empty passphrase protects nothing")
        slot_id = os.urandom(8).hex()
        kdf = {"name": "argon2id", **ARGON2, "salt": os.urandom(16).hex()}
        nonce = os.urandom(12)
        wrapped = AESGCM(_kek(passphrase, kdf)).encrypt(nonce, master, _associated(self.repo_id, slot_id, kdf))
        about_nonce = os.urandom(12)
        about = AESGCM(self._about_key(master)).encrypt(
            about_nonce, json.dumps({"created": time.time(), "host": os.uname().nodename}).encode(),
            _about_associated(self.repo_id, slot_id))
        fields = {"format": FORMAT, "version": 1, "id": slot_id, "kdf": kdf, "wrapped": (nonce + wrapped).hex(),
                  "about": (about_nonce + about).hex()}
        body = {**fields, "checksum": blake3.blake3(_canonical(fields)).hexdigest()}
        if not self.store.put_if_absent(KEYS_PREFIX + slot_id, json.dumps(body, indent=2).encode()):
            raise CbtError(f"key slot {slot_id} exists already")
        self.store.sync()
        return slot_id

    def _read(self, key: str) -> dict[str, Any]:
        """A slot's fields, checked against its checksum (``CorruptDataError`` if edited or damaged)."""
        try:
            fields: dict[str, Any] = json.loads(self.store.get(key))
            checksum = fields.pop("checksum")
            ok = fields.get("format") == FORMAT and blake3.blake3(_canonical(fields)).hexdigest() == checksum
        except (ValueError, KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            raise CorruptDataError(f"key slot {key} is damaged or was edited")
        return fields

    def unlock(self, passphrase: str) -> tuple[bytes, str]:
        """The master key, and the id of the slot that opened it."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        damaged = []
        slots = [o.key for o in self.store.list(KEYS_PREFIX)]
        for key in slots:
            try:
                fields = self._read(key)
                raw = bytes.fromhex(fields["wrapped"])
                kdf = fields["kdf"]
                master: bytes = AESGCM(_kek(passphrase, kdf)).decrypt(
                    raw[:12], raw[12:], _associated(self.repo_id, fields["id"], kdf))
                return master, str(fields["id"])
            except CorruptDataError:
                damaged.append(key)
            except (InvalidTag, ValueError, KeyError, TypeError):
                continue
        if not slots:
            raise CorruptDataError("the repository is encrypted but has no key slot (keys/ is empty)")
        if damaged:
            raise UnlockError(f"no key slot opens with this passphrase; damaged or edited: {', '.join(damaged)}")
        raise UnlockError("wrong passphrase: no key slot opens with it")

    def slots(self) -> list[SlotInfo]:
        out = []
        for obj in self.store.list(KEYS_PREFIX):
            try:
                f = self._read(obj.key)
                about = self._about(f)
                out.append(SlotInfo(str(f["id"]), float(about.get("created", 0.0)), str(about.get("host", "?")),
                                    str(f["kdf"]["name"])))
            except (CorruptDataError, KeyError, TypeError, ValueError):
                out.append(SlotInfo(obj.key[len(KEYS_PREFIX):], 0.0, "?", "damaged"))
        return out

    def _about(self, fields: dict[str, Any]) -> dict[str, Any]:
        """When and where a slot was made: sealed in slots of this version, plaintext in earlier ones."""
        if "about" not in fields:
            return {"created": fields.get("created", 0.0), "host": fields.get("host", "?")}
        if self._master is None:
            return {}
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            raw = bytes.fromhex(str(fields["about"]))
            about: dict[str, Any] = json.loads(AESGCM(self._about_key(self._master)).decrypt(
                raw[:12], raw[12:], _about_associated(self.repo_id, str(fields["id"]))))
        except (InvalidTag, ValueError):
            return {}
        return about

    def seal_about(self) -> int:
        """Write again, with their host and time sealed, the slots made before slots sealed them (an upgrade);
        how many. Each is one atomic put of the same wrapped key: a slot is whole in either form."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if self._master is None:
            return 0
        done = 0
        for obj in self.store.list(KEYS_PREFIX):
            try:
                fields = self._read(obj.key)
            except CorruptDataError:
                continue  # verify reports it; rewriting would make it look whole
            if "about" in fields:
                continue
            about = {"created": fields.pop("created", 0.0), "host": fields.pop("host", "?")}
            nonce = os.urandom(12)
            sealed = AESGCM(self._about_key(self._master)).encrypt(
                nonce, json.dumps(about).encode(), _about_associated(self.repo_id, str(fields["id"])))
            fields["about"] = (nonce + sealed).hex()
            body = {**fields, "checksum": blake3.blake3(_canonical(fields)).hexdigest()}
            self.store.put(obj.key, json.dumps(body, indent=2).encode())
            done += 1
        if done:
            self.store.sync()
        return done

    def damaged(self) -> list[str]:
        """Slots whose checksum fails (for verify)."""
        bad = []
        for obj in self.store.list(KEYS_PREFIX):
            try:
                self._read(obj.key)
            except CorruptDataError:
                bad.append(obj.key)
        return bad

    def remove(self, slot_id: str, current: str) -> None:
        ids = [s.id for s in self.slots()]
        if slot_id not in ids:
            raise NotFoundError(f"no key slot {slot_id}")
        if slot_id == current:
            raise UsageError(f"key slot {slot_id} is the one this command was unlocked with; unlock with another "
                             "passphrase to remove it")
        if len(ids) == 1:
            raise UsageError("that is the last key slot: without it nobody could open the repository")
        self.store.delete(KEYS_PREFIX + slot_id)
        self.store.sync()
