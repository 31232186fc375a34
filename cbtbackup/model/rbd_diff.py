"""The stream format of ``rbd export-diff`` / ``rbd import-diff``, version 1 (Ceph's doc/dev/rbd-diff.rst).

A header line, metadata records (from-snapshot, to-snapshot, image size), then data records — ``w`` (offset,
length, bytes) and ``z`` (offset, length: zeros) — and an end record. All numbers are little-endian.
Version 2 only prefixes each record with its length, so that a reader can skip tags it does not know;
``rbd import-diff`` reads both, and version 1 carries everything a diff between two backups needs.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator
from typing import BinaryIO

HEADER = b"rbd diff v1\n"
MAX_DATA_RECORD = 4 << 20  # rbd import-diff holds one record in memory: keep them small
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_EXTENT = struct.Struct("<QQ")


class DiffFormatError(ValueError):
    """Bytes that are not an rbd diff v1 stream."""


def metadata(size: int, from_snap: str | None = None, to_snap: str | None = None) -> bytes:
    """The header and metadata records."""
    out = bytearray(HEADER)
    for tag, name in ((b"f", from_snap), (b"t", to_snap)):
        if name is not None:
            raw = name.encode()
            out += tag + _U32.pack(len(raw)) + raw
    out += b"s" + _U64.pack(size)
    return bytes(out)


def data_header(offset: int, length: int) -> bytes:
    """The start of a ``w`` record; ``length`` bytes of data follow it."""
    return b"w" + _EXTENT.pack(offset, length)


def zero_record(offset: int, length: int) -> bytes:
    return b"z" + _EXTENT.pack(offset, length)


END = b"e"


@dataclasses.dataclass(frozen=True)
class Record:
    tag: str  # "w" or "z"
    offset: int
    length: int
    data: bytes = b""


@dataclasses.dataclass
class Stream:
    from_snap: str | None = None
    to_snap: str | None = None
    size: int | None = None


def read_stream(f: BinaryIO) -> tuple[Stream, Iterator[Record]]:
    """The metadata of a stream, and its data records in order (read as they are iterated)."""
    if _exact(f, len(HEADER)) != HEADER:
        raise DiffFormatError("not an rbd diff v1 stream (header)")
    meta = Stream()
    while True:
        tag = _exact(f, 1)
        if tag in (b"f", b"t"):
            name = _exact(f, _U32.unpack(_exact(f, 4))[0]).decode()
            if tag == b"f":
                meta.from_snap = name
            else:
                meta.to_snap = name
        elif tag == b"s":
            meta.size = _U64.unpack(_exact(f, 8))[0]
        else:
            break

    def records(tag: bytes) -> Iterator[Record]:
        while tag != END:
            if tag not in (b"w", b"z"):
                raise DiffFormatError(f"unknown record {tag!r}")
            offset, length = _EXTENT.unpack(_exact(f, 16))
            data = _exact(f, length) if tag == b"w" else b""
            yield Record(tag.decode(), offset, length, data)
            tag = _exact(f, 1)

    return meta, records(tag)


def _exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise DiffFormatError("the stream ends early")
    return data
