"""The real blksnap module, inside the test VM (``bash tests/kernel/run-vm-tests``).

These tests are selected only with ``-m kernel`` (pyproject deselects them otherwise); once selected they
need the module and fail, not skip, without it. Devices are small loop devices on the VM's scratch disk:
under software emulation every byte read costs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cbtbackup.engine.blksnap.kernel import BlksnapModule, module_loaded
from tests.conftest import RunCli

MiB = 1 << 20
MakeDevice = Callable[..., str]


@pytest.fixture(autouse=True)
def real_module() -> Iterator[BlksnapModule]:
    """The loaded module; after each test, no snapshot may be left (every path destroys its own)."""
    assert module_loaded(), "the blksnap module is not loaded: run these tests with tests/kernel/run-vm-tests"
    module = BlksnapModule.open()
    try:
        yield module
        assert module.snapshot_collect() == [], "a test left a snapshot behind"
    finally:
        module.close()


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A directory on the VM's scratch disk (ext4), else the test's own."""
    base = os.environ.get("SCRATCH")
    if base is None:
        return tmp_path
    path = Path(base) / tmp_path.name
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def make_device(scratch: Path, cli: RunCli) -> Iterator[MakeDevice]:
    """Loop devices of random content; the filter is detached and the device removed at the end."""
    loops: list[str] = []

    def make(size: int = 16 * MiB) -> str:
        image = scratch / f"backing{len(loops)}.img"
        image.write_bytes(os.urandom(size))
        loop = subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True,
                              text=True).stdout.strip()
        loops.append(loop)
        return loop

    yield make
    for loop in loops:
        cli("blksnap", "detach", loop)  # where attached
        subprocess.run(["losetup", "-d", loop], capture_output=True)


@pytest.fixture
def storage(scratch: Path) -> Path:
    path = scratch / "diff"
    path.mkdir()
    return path


@pytest.fixture
def repo(cli: RunCli, scratch: Path) -> Path:
    path = scratch / "repo"
    assert cli("init", "-r", path, "--encryption", "none", "--chunk-size", "256KiB").code == 0
    return path


def write_device(device: str, offset: int, data: bytes) -> None:
    """A write through the block layer (and so through the filter), on disk when this returns."""
    fd = os.open(device, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_device(device: str) -> bytes:
    with open(device, "rb") as f:
        return f.read()
