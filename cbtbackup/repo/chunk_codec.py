"""Chunk objects: a self-checking header and the (maybe compressed) plaintext.

    offset  size  field
    0       4     magic  b"CBTC"
    4       1     format version (1)
    5       1     codec: 0 = stored raw, 1 = zstd
    6       2     reserved, zero
    8       4     plaintext length (u32, little-endian)
    12      32    the chunk's id: BLAKE3 of the plaintext, keyed in an encrypted repository (also its key)
    44      ...   payload

A chunk whose zstd frame would not save at least 1/32 of its size is stored raw: compression is tried
once, never twice.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable

import zstandard

from cbtbackup.errors import CorruptDataError, UsageError

MAGIC = b"CBTC"
VERSION = 1
RAW, ZSTD = 0, 1
_HEADER = struct.Struct("<4sBBHI32s")
HEADER_SIZE = _HEADER.size


class CorruptChunkError(CorruptDataError):
    """A chunk object fails its checks; ``digest`` names it."""

    def __init__(self, digest: bytes, why: str) -> None:
        super().__init__(f"chunk {digest.hex()} is corrupt: {why}")
        self.digest = digest


class MissingChunkError(CorruptChunkError):
    """A chunk a backup needs is not in the repository (deleted, or quarantined by verify)."""

    def __init__(self, digest: bytes, where: str) -> None:
        CorruptDataError.__init__(self, f"chunk {digest.hex()} is missing from {where}")
        self.digest = digest


# Level 2, not zstd's own default 3: on real data it costs 0.7-0.9x level 3's CPU for 2-4 % more stored
# bytes, and on text of few symbols (hex, base64, logs) a fifth of it for a better ratio
# (bench/compression_levels.py, docs/design.md).
DEFAULT_COMPRESSION = "zstd:2"

ChunkId = Callable[[bytes | memoryview], bytes]


class ChunkCodec:
    """Encodes and decodes chunk objects; safe to share between threads. ``chunk_id`` is the repository's
    (plain or keyed BLAKE3), which decoding checks the plaintext against."""

    def __init__(self, compression: str, chunk_id: ChunkId) -> None:
        self.compression = compression
        self._chunk_id = chunk_id
        self._level = parse_compression(compression)
        self._local = threading.local()

    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = zstandard.ZstdCompressor(level=self._level or 3)
        return c

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "d", None)
        if d is None:
            d = self._local.d = zstandard.ZstdDecompressor()
        return d

    def encode(self, data: bytes | memoryview, digest: bytes) -> bytes:
        codec, payload = RAW, data
        if self._level is not None:
            packed = self._compressor().compress(data)
            if len(packed) < len(data) - len(data) // 32:
                codec, payload = ZSTD, packed
        return _HEADER.pack(MAGIC, VERSION, codec, 0, len(data), digest) + payload

    def decode(self, raw: bytes, expected: bytes) -> bytes:
        """The verified plaintext of a chunk object stored under digest ``expected``."""
        if len(raw) < HEADER_SIZE:
            raise CorruptChunkError(expected, "object is shorter than its header")
        magic, version, codec, _, length, digest = _HEADER.unpack_from(raw)
        if magic != MAGIC:
            raise CorruptChunkError(expected, "bad magic")
        if version != VERSION:
            raise CorruptChunkError(expected, f"unknown chunk format version {version}")
        if digest != expected:
            raise CorruptChunkError(expected, "header names another chunk")
        payload = memoryview(raw)[HEADER_SIZE:]
        if codec == RAW:
            data = bytes(payload)
        elif codec == ZSTD:
            try:
                data = self._decompressor().decompress(payload, max_output_size=length)
            except zstandard.ZstdError as e:
                raise CorruptChunkError(expected, f"zstd: {e}") from None
        else:
            raise CorruptChunkError(expected, f"unknown codec {codec}")
        if len(data) != length or self._chunk_id(data) != expected:
            raise CorruptChunkError(expected, "content does not match its digest")
        return data


def parse_compression(spec: str) -> int | None:
    """``zstd:N`` (N from 1 to 22), ``zstd`` (level 3) or ``none``: the zstd level, or None."""
    name, _, level = spec.partition(":")
    if name == "none" and not level:
        return None
    if name == "zstd":
        try:
            n = int(level) if level else 3
        except ValueError:
            n = 0
        if 1 <= n <= 22:
            return n
    raise UsageError(f"compression {spec!r} is not one of: none, zstd, zstd:1 ... zstd:22")
