"""Real QEMU: qcow2 images made with qemu-img and written with qemu-io, a VM with no guest (``-machine none``)
whose disk is written through HMP ``qemu-io``, and a model of what each image should hold."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cbtbackup.engine.providers import QemuSession
from tests.conftest import RunCli

MiB = 1 << 20


class Disk:
    """A qcow2 image and what it should read as."""

    def __init__(self, path: Path, size: int) -> None:
        self.path, self.size = path, size
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)], check=True)
        self.model = bytearray(size)

    def write(self, offset: int, length: int, pattern: int) -> None:
        """A write with qemu-io while no VM runs the image."""
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset} {length}", str(self.path)],
                       check=True, capture_output=True)
        self.model[offset: offset + length] = bytes([pattern]) * length


@pytest.fixture
def disk(tmp_path: Path) -> Disk:
    d = Disk(tmp_path / "vm-disk.qcow2", 64 * MiB)
    d.write(0, 4 * MiB, 0x11)
    d.write(40 * MiB, 2 * MiB, 0x22)
    return d


@pytest.fixture
def repo(cli: RunCli, tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    assert cli("init", "-r", path, "--encryption", "none").code == 0
    return path


@pytest.fixture
def nbd_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The bytes each QEMU backup read as NBD data, in order (the client's own counter)."""
    seen: list[int] = []
    original = QemuSession.close

    def close(self: QemuSession) -> None:
        if self._client is not None:
            seen.append(self.nbd_bytes_read)
        original(self)

    monkeypatch.setattr(QemuSession, "close", close)
    return seen


class Vm:
    """qemu-system-x86_64 with no guest: one qcow2 disk, drive ``drive0`` on node ``disk0``; two QMP monitors,
    as a VM run by libvirt needs (one for the test, which holds it as libvirt holds its own; one for
    cbtbackup)."""

    def __init__(self, disk: Disk, workdir: Path, more: tuple[Disk, ...] = ()) -> None:
        """``more``: further disks, as drives ``drive1``, ``drive2`` … on nodes ``disk1``, ``disk2`` …"""
        self.disk = disk
        self.disks = (disk, *more)
        self.qmp_path = workdir / "vm-qmp.sock"  # cbtbackup's
        self.test_qmp_path = workdir / "vm-test-qmp.sock"
        self.proc = subprocess.Popen(
            ["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
             "-qmp", f"unix:{self.test_qmp_path},server=on,wait=off",
             "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
             # a drive, not a bare node: its BlockBackend stands for the guest's disk device, whose writes pass
             # through whatever filter a backup inserts above the node (a bare qemu-io on the node would not)
             *[arg for i, d in enumerate(self.disks) for arg in (
                 "-drive", f"if=none,id=drive{i},driver=qcow2,node-name=disk{i},file.driver=file,"
                           f"file.filename={d.path}")]],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not (self.qmp_path.exists() and self.test_qmp_path.exists()):
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else "QEMU exited"
            assert time.monotonic() < deadline, "QEMU did not start"
            time.sleep(0.05)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(self.test_qmp_path))
        self.file = self.sock.makefile("rw")
        self.file.readline()  # greeting
        self.execute("qmp_capabilities")

    def execute(self, command: str, **arguments: Any) -> Any:
        self.file.write(json.dumps({"execute": command, "arguments": arguments}) + "\n")
        self.file.flush()
        while True:
            reply = json.loads(self.file.readline())
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise AssertionError(f"{command}: {reply['error']}")

    def write(self, offset: int, length: int, pattern: int, drive: int = 0) -> None:
        """A guest write: HMP qemu-io on the running disk (it has landed when this returns)."""
        out = self.execute("human-monitor-command",
                           **{"command-line": f'qemu-io drive{drive} "write -P {pattern} {offset} {length}"'})
        assert out == "", out  # HMP qemu-io answers nothing on success, the reason on failure
        self.disks[drive].model[offset: offset + length] = bytes([pattern]) * length

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            self.execute("quit")
        self.proc.wait(30)
        self.sock.close()


@pytest.fixture
def vm(disk: Disk, tmp_path: Path) -> Iterator[Vm]:
    machine = Vm(disk, tmp_path)
    yield machine
    if machine.proc.poll() is None:
        machine.stop(kill=True)


def restored(cli: RunCli, repo: Path, backup_id: str, out: Path) -> bytes:
    result = cli("restore", "-r", repo, backup_id, out)
    assert result.code == 0, result.err
    data = out.read_bytes()
    out.unlink()
    return data

