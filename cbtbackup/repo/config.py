"""The repository's ``config`` object: the format version and the settings fixed at ``init``."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid

from cbtbackup.errors import CorruptDataError, UsageError
from cbtbackup.repo.chunk_codec import parse_compression
from cbtbackup.repo.retention import RetentionPolicy
from cbtbackup.repo.sealing import check_mode

FORMAT_NAME = "cbtbackup-repository"
FORMAT_VERSION = 1
MIN_CHUNK, MAX_CHUNK = 64 << 10, 16 << 20


class UnsupportedVersionError(UsageError):
    """The repository was written by a newer cbtbackup."""


@dataclasses.dataclass(frozen=True)
class RepositoryConfig:
    chunk_size: int = 1 << 20
    compression: str = "zstd:3"
    id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    created: float = dataclasses.field(default_factory=time.time)
    version: int = FORMAT_VERSION
    encryption: str = "none"  # "none", "aes-256-gcm" or "chacha20-poly1305"
    mac: str = ""  # keyed BLAKE3 of the other fields, in an encrypted repository (checked once unlocked)
    # Immutable backups (S3 Object Lock): every object is written under retention for lock_seconds; empty
    # and 0 otherwise, and then absent from the JSON, so configs written before them read and MAC the same.
    lock_mode: str = ""
    lock_seconds: float = 0.0

    def __post_init__(self) -> None:
        cs = self.chunk_size
        if cs < MIN_CHUNK or cs > MAX_CHUNK or cs & (cs - 1):
            raise UsageError(f"chunk size {cs} is not a power of two from 64 KiB to 16 MiB")
        parse_compression(self.compression)
        check_mode(self.encryption)
        if self.lock_mode:
            self.retention()

    def retention(self) -> RetentionPolicy | None:
        """The retention every write carries, or None in a repository without Object Lock."""
        return RetentionPolicy(self.lock_mode, self.lock_seconds) if self.lock_mode else None

    def _fields(self) -> dict[str, object]:
        fields = dataclasses.asdict(self)
        if not self.lock_mode:
            del fields["lock_mode"], fields["lock_seconds"]
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
