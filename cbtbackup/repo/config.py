"""The repository's ``config`` object: the format version and the settings fixed at ``init``."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid

from cbtbackup.errors import CorruptDataError, UsageError
from cbtbackup.repo.chunk_codec import DEFAULT_COMPRESSION, parse_compression
from cbtbackup.repo.retention import RetentionPolicy
from cbtbackup.repo.sealing import check_mode

FORMAT_NAME = "cbtbackup-repository"
FORMAT_VERSION = 2  # the newest this cbtbackup reads and writes
# Version 2 adds private object names (object_names.py); a repository without them stays version 1, so
# that versions of cbtbackup before it keep opening it.
PRIVATE_NAMES_VERSION = 2
NAMES = ("", "private")
MIN_CHUNK, MAX_CHUNK = 64 << 10, 16 << 20


class UnsupportedVersionError(UsageError):
    """The repository was written by a newer cbtbackup."""


@dataclasses.dataclass(frozen=True)
class RepositoryConfig:
    chunk_size: int = 1 << 20
    compression: str = DEFAULT_COMPRESSION
    id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    created: float = dataclasses.field(default_factory=time.time)
    version: int = 1
    encryption: str = "none"  # "none", "aes-256-gcm" or "chacha20-poly1305"
    mac: str = ""  # keyed BLAKE3 of the other fields, in an encrypted repository (checked once unlocked)
    # Immutable backups (S3 Object Lock): every object is written under retention for lock_seconds; empty
    # and 0 otherwise, and then absent from the JSON, so configs written before them read and MAC the same.
    lock_mode: str = ""
    lock_seconds: float = 0.0
    # "private": chain names and backup times are not in object names (object_names.py); encrypted
    # repositories only. Empty, and then absent from the JSON, in the layout of version 1.
    names: str = ""

    def __post_init__(self) -> None:
        cs = self.chunk_size
        if cs < MIN_CHUNK or cs > MAX_CHUNK or cs & (cs - 1):
            raise UsageError(f"chunk size {cs} is not a power of two from 64 KiB to 16 MiB")
        parse_compression(self.compression)
        check_mode(self.encryption)
        if self.lock_mode:
            self.retention()
        if self.names not in NAMES:
            raise CorruptDataError(f"object names {self.names!r} are not a layout this cbtbackup knows")
        if self.names and self.encryption == "none":
            raise CorruptDataError("the config was changed: it says private object names, which only an encrypted "
                                   "repository has (their key is derived from its key)")
        if self.names and self.version < PRIVATE_NAMES_VERSION:
            raise CorruptDataError("the config says private object names but an older format version")

    @property
    def private_names(self) -> bool:
        return self.names == "private"

    def retention(self) -> RetentionPolicy | None:
        """The retention every write carries, or None in a repository without Object Lock."""
        return RetentionPolicy(self.lock_mode, self.lock_seconds) if self.lock_mode else None

    def _fields(self) -> dict[str, object]:
        fields = dataclasses.asdict(self)
        if not self.lock_mode:
            del fields["lock_mode"], fields["lock_seconds"]
        if not self.names:
            del fields["names"]
        return fields

    def body_for_mac(self) -> bytes:
        """The fields the MAC covers: everything but the MAC."""
        fields = {k: v for k, v in self._fields().items() if k != "mac"}
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()

    def to_bytes(self) -> bytes:
        fields = {"format": FORMAT_NAME, **self._fields()}
        return json.dumps(fields, indent=2).encode() + b"\n"

    @classmethod
    def from_bytes(cls, raw: bytes, where: str) -> RepositoryConfig:
        try:
            fields = json.loads(raw)
            if not isinstance(fields, dict) or fields.pop("format", None) != FORMAT_NAME:
                raise ValueError("not a cbtbackup config")
        except ValueError:
            raise CorruptDataError(f"{where} is not a cbtbackup repository (its config is not ours)") from None
        version = fields.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise UnsupportedVersionError(
                f"{where} has repository format version {version}; this cbtbackup reads up to {FORMAT_VERSION}"
                " — upgrade cbtbackup"
            )
        try:
            return cls(**fields)
        except TypeError as e:
            raise CorruptDataError(f"{where}: config is malformed ({e})") from None
