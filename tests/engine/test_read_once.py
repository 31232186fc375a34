"""Reads of a backup's one pass leave the page cache as it was without them, and never lose a write."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cbtbackup.engine import TrackedVolume
from cbtbackup.engine.read_once import drop_cached, pread_once, preadv_once
from tests.conftest import MakeImage, RunCli
from tests.page_cache import cached_bytes, needs_droppable_cache


def test_pread_once_returns_the_bytes_and_leaves_no_pages(make_image: MakeImage) -> None:
    # Ranges aligned to 4 MiB: the page cache may hold a file in folios of up to 2 MiB, and a folio that
    # reaches outside the range advised is kept.
    img = make_image(16 << 20)
    needs_droppable_cache(img)
    expected = img.read_bytes()
    assert cached_bytes(img, 0, 16 << 20) == 16 << 20
    fd = os.open(img, os.O_RDONLY)
    try:
        assert pread_once(fd, 8 << 20, 0) == expected[: 8 << 20]
        buffer = bytearray(4 << 20)
        assert preadv_once(fd, memoryview(buffer), 12 << 20) == 4 << 20
        assert bytes(buffer) == expected[12 << 20:]
    finally:
        os.close(fd)
    assert cached_bytes(img, 0, 8 << 20) == 0
    assert cached_bytes(img, 12 << 20, 4 << 20) == 0
    assert cached_bytes(img, 8 << 20, 4 << 20) == 4 << 20  # what was not read stays


def test_written_pages_not_yet_on_disk_are_never_dropped(make_image: MakeImage) -> None:
    img = make_image(4 << 20)
    new = os.urandom(4 << 20)
    fd = os.open(img, os.O_RDWR)
    try:
        os.pwrite(fd, new, 0)  # dirty, not synced
        assert pread_once(fd, 4 << 20, 0) == new
        drop_cached(fd, 0, 4 << 20)
        assert os.pread(fd, 4 << 20, 0) == new
        os.fsync(fd)
    finally:
        os.close(fd)
    os.sync()
    fd = os.open(img, os.O_RDONLY)
    try:
        drop_cached(fd, 0, 4 << 20)  # now clean, and gone: read back from the disk
        assert os.pread(fd, 4 << 20, 0) == new
    finally:
        os.close(fd)


def test_drop_cached_of_nothing_or_of_a_pipe_is_harmless() -> None:
    r, w = os.pipe()
    try:
        drop_cached(r, 0, 1 << 20)  # ESPIPE, swallowed: it is only a hint
        drop_cached(r, 0, 0)
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("provider", ["userspace", "scan"])
def test_a_full_backup_leaves_the_source_out_of_the_page_cache(
    make_image: MakeImage, cli: RunCli, tmp_path: Path, provider: str
) -> None:
    img = make_image(16 << 20)
    if provider == "userspace":
        with TrackedVolume.track(img) as vol:  # written through the engine: the pages are cached
            vol.write(3 << 20, os.urandom(1 << 20))
            vol.flush()
    needs_droppable_cache(img)
    expected = img.read_bytes()
    assert cli("init", "-r", tmp_path / "repo", "--encryption", "none").code == 0
    result = cli("full", "-r", tmp_path / "repo", "--provider", provider, img)
    assert result.code == 0, result.err
    assert cached_bytes(img, 0, 16 << 20) == 0
    assert cli("restore", "-r", tmp_path / "repo", "latest", tmp_path / "out.img").code == 0
    assert (tmp_path / "out.img").read_bytes() == expected
