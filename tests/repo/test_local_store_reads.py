"""The local store's reads of large objects (chunks) leave the page cache without them; small ones stay."""

from __future__ import annotations

import os
from pathlib import Path

from cbtbackup.repo.local_store import WRITE_THROUGH, LocalStore
from tests.page_cache import cached_bytes, needs_droppable_cache, warm

MiB = 1 << 20


def test_a_chunk_read_back_is_not_kept_in_the_page_cache(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    chunk, small = os.urandom(MiB), os.urandom(WRITE_THROUGH // 2)
    store.put("chunks/ab/big", chunk)
    store.put("backups/c/small", small)
    big_file, small_file = tmp_path / "chunks/ab/big", tmp_path / "backups/c/small"
    needs_droppable_cache(big_file)  # cached now, as by any program that read it
    warm(small_file)
    assert store.get("chunks/ab/big", 4096, 8192) == chunk[4096:12288]  # a small range: kept
    assert cached_bytes(big_file, 0, MiB) == MiB
    assert store.get("chunks/ab/big") == chunk
    assert cached_bytes(big_file, 0, MiB) == 0
    assert store.get("backups/c/small") == small  # small objects (manifests, locks) stay cached
    assert cached_bytes(small_file, 0, len(small) // 4096 * 4096) == len(small) // 4096 * 4096
    assert store.get("chunks/ab/big") == chunk  # read from the disk again, the same bytes
