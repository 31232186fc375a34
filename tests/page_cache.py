"""What the page cache holds of a file, for tests of code that leaves it as it found it."""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

import pytest

from cbtbackup.engine.read_once import drop_cached

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


def _probe(path: Path) -> int:
    """How much of the file to look at: its first 4 MiB, in whole pages."""
    return min(4 * MiB, path.stat().st_size) // PAGE * PAGE


def warm(path: Path) -> None:
    """Write the file's pages out and read them into the page cache, as a program that used it would."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        while os.read(fd, MiB):
            pass
    finally:
        os.close(fd)
    if cached_bytes(path, 0, _probe(path)) == 0:
        pytest.skip("this file system does not keep read pages in the page cache")


def needs_droppable_cache(path: Path) -> None:
    """Skip on a file system whose pages cannot be dropped (tmpfs: the page cache is the file)."""
    warm(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        drop_cached(fd, 0, _probe(path))
    finally:
        os.close(fd)
    if cached_bytes(path, 0, _probe(path)) == _probe(path):
        pytest.skip("this file system keeps its pages whatever is advised (tmpfs)")
    warm(path)
