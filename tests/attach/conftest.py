"""Attached volumes with real FUSE mounts, loop devices and ext4, cleaned up whatever a test does."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cbtbackup.engine.attach import system_tools
from cbtbackup.engine.attach.record import AttachRecord
from tests.conftest import RunCli

MiB = 1 << 20
STDLIB = Path(sysconfig.get_paths()["stdlib"])
# A real tree of files: a few packages of Python's standard library (about 6 MiB, 600 files).
TREE_PARTS = ["json", "email", "asyncio", "xml", "logging", "importlib", "concurrent", "http", "urllib",
              "unittest"]


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def checksums(root: Path) -> dict[str, str]:
    """Path -> SHA-256 of every regular file under ``root`` (plus directories, as 'dir')."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            if d != "lost+found":
                out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        dirnames[:] = [d for d in dirnames if d != "lost+found"]
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def copy_tree(dest: Path) -> None:
    for part in TREE_PARTS:
        shutil.copytree(STDLIB / part, dest / part, ignore=shutil.ignore_patterns("__pycache__", "test*"))


class Attached:
    """One attached image: attach, and undo everything at the end even if the test failed half-way."""

    def __init__(self, cli: RunCli, image: Path, mountdir: Path, state_dir: Path | None = None) -> None:
        self.cli, self.image, self.mountdir, self.state_dir = cli, image, mountdir, state_dir
        self.record: AttachRecord | None = None
        self.mounts: list[Path] = []

    def attach(self) -> AttachRecord:
        state = ("--state-dir", self.state_dir) if self.state_dir is not None else ()
        result = self.cli("attach", self.image, self.mountdir, "--loop", *state, "--json")
        assert result.code == 0, result.err
        self.record = AttachRecord(**result.json)
        assert self.record.loop is not None
        return self.record

    @property
    def loop(self) -> str:
        assert self.record is not None and self.record.loop is not None
        return self.record.loop

    def mount(self, where: Path) -> None:
        where.mkdir(exist_ok=True)
        sh("mount", self.loop, str(where))
        self.mounts.append(where)

    def umount(self, where: Path) -> None:
        sh("umount", str(where))
        self.mounts.remove(where)

    def kill(self) -> None:
        assert self.record is not None
        os.kill(self.record.pid, signal.SIGKILL)

    def cleanup(self) -> None:
        for where in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(where)], capture_output=True)
        if self.record is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.record.pid, signal.SIGTERM)
            wait_gone(self.record.pid)  # its teardown must not overlap the next test's attach
        for loop in system_tools.loops_backed_by(self.mountdir / "volume"):
            subprocess.run(["losetup", "-d", loop], capture_output=True)
        if system_tools.is_mount_point(self.mountdir):
            subprocess.run(["umount", "-l", str(self.mountdir)], capture_output=True)


def wait_gone(pid: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        time.sleep(0.05)


@pytest.fixture
def attached_image(cli: RunCli, tmp_path: Path) -> Iterator[Attached]:
    """A 96 MiB tracked image (zeros) and a mount directory; the test attaches it."""
    if not os.path.exists("/dev/fuse"):
        pytest.fail("/dev/fuse is missing: these tests need FUSE")
    image = tmp_path / "vol.img"
    with open(image, "wb") as f:
        f.truncate(96 << 20)
    assert cli("track", image).code == 0
    mnt = tmp_path / "served"
    mnt.mkdir()
    handle = Attached(cli, image, mnt)
    yield handle
    handle.cleanup()


class LoopImage:
    """A restored image mounted read-only through a loop device of its own."""

    def __init__(self, image: Path, where: Path) -> None:
        self.loop = sh("losetup", "--find", "--show", "--read-only", str(image)).strip()
        where.mkdir(exist_ok=True)
        sh("mount", "-o", "ro,noload", self.loop, str(where))
        self.where = where

    def close(self) -> None:
        sh("umount", str(self.where))
        sh("losetup", "-d", self.loop)


def fsck_clean(image: Path) -> tuple[bool, str]:
    done = subprocess.run(["fsck.ext4", "-n", "-f", str(image)], capture_output=True, text=True)
    return done.returncode == 0, done.stdout + done.stderr


def read_direct(device: str) -> bytes:
    """The device's bytes, read past the page cache (what the volume holds right now)."""
    return subprocess.run(["dd", f"if={device}", "iflag=direct", "bs=1M", "status=none"], check=True,
                          capture_output=True).stdout


def write_direct(device: str, offset_mib: int, data: bytes) -> None:
    subprocess.run(["dd", f"of={device}", "oflag=direct", "bs=1M", f"seek={offset_mib}", "conv=notrunc",
                    "status=none"], input=data.ljust(MiB, b"\0"), check=True)


def back_up(cli: RunCli, repo: Path, kind: str, device: str, taken: dict[str, bytes]) -> dict[str, Any]:
    """``kind`` of ``device`` (an attach's loop device), remembering in ``taken`` what it held at the take."""
    expected = read_direct(device)
    result = cli(kind, "-r", repo, device, "--json")
    assert result.code == 0, result.err
    taken[str(result.json["id"])] = expected
    return result.json


def assert_restores(cli: RunCli, repo: Path, taken: dict[str, bytes], where: Path) -> None:
    """Every backup in ``taken`` restores to exactly what its device held at the take."""
    for i, (backup_id, expected) in enumerate(taken.items()):
        out = where / f"restored-{i}.img"
        assert cli("restore", "-r", repo, backup_id, out).code == 0
        assert out.read_bytes() == expected, f"backup {i} ({backup_id}) differs from its take"
