"""Fixtures shared by every test package: real image files with real content."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

MakeImage = Callable[..., Path]


@pytest.fixture
def make_image(tmp_path: Path) -> MakeImage:
    """A factory of image files filled with random bytes (or zeros), ``size`` bytes long."""
    counter = 0

    def make(size: int = 4 << 20, *, zeros: bool = False, name: str | None = None) -> Path:
        nonlocal counter
        counter += 1
        path = tmp_path / (name or f"disk{counter}.img")
        with open(path, "wb") as f:
            if zeros:
                f.truncate(size)
            else:
                f.write(os.urandom(size))
        return path

    return make
