"""Reads of a backup's one pass leave the page cache as it was without them, and never lose a write."""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

import pytest

from cbtbackup.engine import TrackedVolume
from cbtbackup.engine.read_once import drop_cached, pread_once, preadv_once
from tests.conftest import MakeImage, RunCli

MiB = 1 << 20


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
PAGE = os.sysconf("SC_PAGE_SIZE")


def cached_bytes(path: Path, offset: int, length: int) -> int:
    """How many bytes of the range the page cache holds (mincore of a mapping: it reads nothing)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, offset)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap")
        try:
            pages = -(-length // PAGE)
            vec = ctypes.create_string_buffer(pages)
            if _libc.mincore(addr, length, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
            return sum(b & 1 for b in vec.raw) * PAGE
        finally:
            _libc.munmap(addr, length)
    finally:
        os.close(fd)


def warm(path: Path) -> None:
    """Write the file's pages out and read them into the page cache, as a program that used it would."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        while os.read(fd, MiB):
            pass
    finally:
        os.close(fd)
    if cached_bytes(path, 0, 4 << 20) == 0:
        pytest.skip("this file system does not keep read pages in the page cache")


def needs_droppable_cache(path: Path) -> None:
    """Skip on a file system whose pages cannot be dropped (tmpfs: the page cache is the file)."""
    warm(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        drop_cached(fd, 0, 4 << 20)
    finally:
        os.close(fd)
    if cached_bytes(path, 0, 4 << 20) == 4 << 20:
        pytest.skip("this file system keeps its pages whatever is advised (tmpfs)")
    warm(path)


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
