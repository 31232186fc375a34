from __future__ import annotations

import os

import pytest

from cbtbackup.errors import UsageError
from cbtbackup.repo.chunk_codec import DEFAULT_COMPRESSION, HEADER_SIZE, RAW, ZSTD, ChunkCodec, CorruptChunkError
from cbtbackup.repo.config import RepositoryConfig
from cbtbackup.repo.sealing import PlainSealer

digest_of = PlainSealer().chunk_id


def test_compressible_data_is_zstd_and_round_trips() -> None:
    codec = ChunkCodec("zstd:3", digest_of)
    data = b"text-like data " * 5000
    obj = codec.encode(data, digest_of(data))
    assert obj[5] == ZSTD and len(obj) < len(data) // 10
    assert codec.decode(obj, digest_of(data)) == data


def test_incompressible_data_is_stored_raw() -> None:
    codec = ChunkCodec("zstd:3", digest_of)
    data = os.urandom(1 << 20)
    obj = codec.encode(data, digest_of(data))
    assert obj[5] == RAW and len(obj) == HEADER_SIZE + len(data)
    assert codec.decode(obj, digest_of(data)) == data


def test_no_compression() -> None:
    codec = ChunkCodec("none", digest_of)
    data = bytes(1000)
    assert codec.encode(data, digest_of(data))[5] == RAW


@pytest.mark.parametrize("where", [0, 5, 20, HEADER_SIZE + 10, -1])
def test_any_flipped_byte_is_caught(where: int) -> None:
    codec = ChunkCodec("zstd:3", digest_of)
    data = b"abc" * 10000
    obj = bytearray(codec.encode(data, digest_of(data)))
    obj[where] ^= 0x40
    with pytest.raises(CorruptChunkError) as info:
        codec.decode(bytes(obj), digest_of(data))
    assert digest_of(data).hex() in str(info.value)


def test_object_under_the_wrong_name() -> None:
    codec = ChunkCodec("zstd:3", digest_of)
    a, b = b"a" * 100, b"b" * 100
    with pytest.raises(CorruptChunkError, match="another chunk"):
        codec.decode(codec.encode(a, digest_of(a)), digest_of(b))


@pytest.mark.parametrize("bad", ["gzip", "zstd:0", "zstd:23", "zstd:x", "none:1"])
def test_bad_compression_specs(bad: str) -> None:
    with pytest.raises(UsageError):
        ChunkCodec(bad, digest_of)


def test_a_new_repository_compresses_at_level_2_which_halves_text_of_few_symbols() -> None:
    # Level 2 is the default because on such text level 3 is five times slower for a worse ratio
    # (bench/compression_levels.py). Chunks of any level decode alike.
    assert RepositoryConfig().compression == DEFAULT_COMPRESSION == "zstd:2"
    data = os.urandom(1 << 19).hex().encode()
    level2 = ChunkCodec(DEFAULT_COMPRESSION, digest_of).encode(data, digest_of(data))
    level3 = ChunkCodec("zstd:3", digest_of).encode(data, digest_of(data))
    assert len(level2) < len(data) * 0.51 < len(level3)
    assert ChunkCodec(DEFAULT_COMPRESSION, digest_of).decode(level3, digest_of(data)) == data
