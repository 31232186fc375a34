"""Manifests: one object per backup, written last, naming its parent and the extents it stored.

Object layout (see docs/format.md):

    8   magic b"CBTMANIF"
    4   format version (u32 LE, 1)
    4   metadata length M (u32 LE)
    M   metadata: UTF-8 JSON
    4   extent table length E (u32 LE)
    E   extent table, zstd-compressed (records of cbtbackup.model.extent_map)
    32  BLAKE3 of everything before
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import struct
import time
import uuid
from typing import Any

import blake3
import zstandard

from cbtbackup.errors import CorruptDataError, UsageError
from cbtbackup.model.checkpoint import CbtCheckpoint
from cbtbackup.model.extent_map import ExtentMap

MAGIC = b"CBTMANIF"
VERSION = 1
_U32 = struct.Struct("<I")
BACKUPS_PREFIX = "backups/"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UsageError(f"backup name {name!r} must be letters, digits, '.', '_' or '-' (at most 128)")
    return name


@dataclasses.dataclass(frozen=True)
class BackupRef:
    """Where a backup's manifest lives: ``backups/<name>/<stamp>_<id>``; sorts by time within a name."""

    name: str
    stamp: str
    id: str

    @property
    def key(self) -> str:
        return f"{BACKUPS_PREFIX}{self.name}/{self.stamp}_{self.id}"

    @property
    def time(self) -> float:
        """When the backup was taken (its stamp), in seconds since the epoch."""
        when = datetime.datetime.strptime(self.stamp, "%Y%m%dT%H%M%S%fZ").replace(tzinfo=datetime.UTC)
        return when.timestamp()

    def just_after(self) -> BackupRef:
        """A new backup of the same chain that sorts right after this one (a microsecond later)."""
        when = datetime.datetime.strptime(self.stamp, "%Y%m%dT%H%M%S%fZ") + datetime.timedelta(microseconds=1)
        return BackupRef(self.name, when.strftime("%Y%m%dT%H%M%S%fZ"), os.urandom(8).hex())

    @classmethod
    def new(cls, name: str) -> BackupRef:
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1e6):06d}Z"
        return cls(check_name(name), stamp, os.urandom(8).hex())

    @classmethod
    def from_key(cls, key: str) -> BackupRef | None:
        if not key.startswith(BACKUPS_PREFIX):
            return None
        name, _, leaf = key[len(BACKUPS_PREFIX):].partition("/")
        stamp, _, ident = leaf.partition("_")
        if not (name and stamp and ident) or "/" in leaf or not NAME_RE.match(name):
            return None
        return cls(name, stamp, ident)


@dataclasses.dataclass
class BackupStats:
    bytes_scanned: int = 0
    bytes_changed: int = 0
    bytes_stored: int = 0
    chunks_new: int = 0
    chunks_reused: int = 0
    duration_s: float = 0.0
    bytes_reused: int = 0  # changed data not stored again: the repository already held its chunks
    bytes_sampled_unchanged: int = 0  # blocks reported unchanged, re-read to check the tracking
    tracking_mismatches: int = 0  # 1: that check found a change the tracking missed (the backup then scanned)


@dataclasses.dataclass
class Manifest:
    ref: BackupRef
    kind: str  # "full" or "incr"
    method: str  # "full", "cbt" or "scan"
    parent: BackupRef | None
    created: float
    source: str
    provider: str
    device_size: int
    chunk_size: int
    map_digest: bytes
    extents: ExtentMap
    cbt: CbtCheckpoint | None = None
    stats: BackupStats = dataclasses.field(default_factory=BackupStats)
    host: str | None = None  # the host that made it (None in manifests of older versions)
    synthesized_from: str | None = None  # the id of the backup a synthetic full reproduces
    # Set while a repack of the backup's full is under way: the map digest the backup has once the full's
    # repacked manifest is in place (pipeline/repack.py). Either digest is accepted until the repack ends.
    map_digest_next: bytes | None = None

    def has_map(self, digest: bytes) -> bool:
        """Whether a resolved map with this digest is this backup's image."""
        return digest == self.map_digest or (self.map_digest_next is not None and digest == self.map_digest_next)

    def metadata(self) -> dict[str, Any]:
        return {
            "id": self.ref.id,
            "name": self.ref.name,
            "stamp": self.ref.stamp,
            "kind": self.kind,
            "method": self.method,
            "parent": self.parent.key if self.parent else None,
            "created": self.created,
            "source": self.source,
            "host": self.host,
            **({"synthesized_from": self.synthesized_from} if self.synthesized_from else {}),
            "provider": self.provider,
            "device_size": self.device_size,
            "chunk_size": self.chunk_size,
            "map_digest": self.map_digest.hex(),
            **({"map_digest_next": self.map_digest_next.hex()} if self.map_digest_next else {}),
            "extent_count": len(self.extents),
            "cbt": None if self.cbt is None else {
                "generation_id": str(self.cbt.generation_id),
                "changes_number": self.cbt.changes_number,
                "block_size": self.cbt.block_size,
                "device_capacity": self.cbt.device_capacity,
            },
            "stats": dataclasses.asdict(self.stats),
        }

    def to_bytes(self) -> bytes:
        meta = json.dumps(self.metadata(), sort_keys=True).encode()
        table = zstandard.ZstdCompressor(level=3).compress(self.extents.to_bytes())
        body = MAGIC + _U32.pack(VERSION) + _U32.pack(len(meta)) + meta + _U32.pack(len(table)) + table
        return body + blake3.blake3(body).digest()

    @classmethod
    def from_bytes(cls, raw: bytes, key: str) -> Manifest:
        body, trailer = raw[:-32], raw[-32:]
        if len(raw) < 52 or raw[:8] != MAGIC:
            raise CorruptDataError(f"manifest {key} is not a cbtbackup manifest")
        if blake3.blake3(body).digest() != trailer:
            raise CorruptDataError(f"manifest {key} is corrupt (checksum mismatch)")
        (version,) = _U32.unpack_from(raw, 8)
        if version != VERSION:
            raise CorruptDataError(f"manifest {key} has unknown format version {version}")
        try:
            return cls._parse(raw, key)
        except (ValueError, KeyError, TypeError, struct.error, zstandard.ZstdError) as e:
            raise CorruptDataError(f"manifest {key} cannot be parsed ({type(e).__name__}: {e})") from None

    @classmethod
    def _parse(cls, raw: bytes, key: str) -> Manifest:
        (meta_len,) = _U32.unpack_from(raw, 12)
        meta = json.loads(raw[16:16 + meta_len])
        pos = 16 + meta_len
        (table_len,) = _U32.unpack_from(raw, pos)
        table = zstandard.ZstdDecompressor().decompress(raw[pos + 4: pos + 4 + table_len])
        ref = BackupRef(meta["name"], meta["stamp"], meta["id"])
        if BackupRef.from_key(key) not in (None, ref):
            # Whole and well-formed, but another backup's: an older manifest copied over a newer one's key.
            raise CorruptDataError(f"manifest {key} holds backup {ref.id} of {ref.stamp} (it belongs under {ref.key})")
        cbt = meta["cbt"]
        return cls(
            ref=ref,
            kind=meta["kind"],
            method=meta["method"],
            parent=BackupRef.from_key(meta["parent"]) if meta["parent"] else None,
            created=meta["created"],
            source=meta["source"],
            provider=meta["provider"],
            device_size=meta["device_size"],
            chunk_size=meta["chunk_size"],
            map_digest=bytes.fromhex(meta["map_digest"]),
            extents=ExtentMap.from_bytes(table),
            cbt=None if cbt is None else CbtCheckpoint(
                uuid.UUID(cbt["generation_id"]), cbt["changes_number"], cbt["block_size"], cbt["device_capacity"]
            ),
            stats=_stats(meta["stats"]),
            host=meta.get("host"),
            synthesized_from=meta.get("synthesized_from"),
            map_digest_next=bytes.fromhex(meta["map_digest_next"]) if meta.get("map_digest_next") else None,
        )


_STATS_FIELDS = {f.name for f in dataclasses.fields(BackupStats)}


def _stats(raw: dict[str, Any]) -> BackupStats:
    """A manifest's figures; ones a later version added are passed over, ones an earlier lacked are 0."""
    return BackupStats(**{k: v for k, v in raw.items() if k in _STATS_FIELDS})
