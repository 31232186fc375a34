"""Real loop devices with the blksnap simulator behind the ioctl call."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cbtbackup.engine.blksnap import kernel
from tests.blksnap.simulator import KernelSimulator

MakeDevice = Callable[..., str]


@pytest.fixture
def make_device(tmp_path: Path) -> Iterator[MakeDevice]:
    """Loop devices on image files of random content, detached at the end."""
    loops: list[str] = []

    def make(size: int = 8 << 20, name: str | None = None) -> str:
        image = tmp_path / (name or f"backing{len(loops)}.img")
        image.write_bytes(os.urandom(size))
        loop = subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True,
                              text=True).stdout.strip()
        loops.append(loop)
        return loop

    yield make
    for loop in loops:
        subprocess.run(["losetup", "-d", loop], capture_output=True)


@pytest.fixture(params=["2", "7"], ids=["upstream-2.0", "standalone-7.x"])
def simulator(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KernelSimulator]:
    """The simulator in each dialect: every test of the backend runs against both module builds."""
    sim = KernelSimulator(tmp_path / "kernel", dialect=request.param)
    previous = kernel.use(sim.env)
    yield sim
    kernel.use(previous)
    sim.close()


def read_device(device: str) -> bytes:
    with open(device, "rb") as f:
        return f.read()
