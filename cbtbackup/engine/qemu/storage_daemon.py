"""``qemu-storage-daemon`` on an image no VM is using: QEMU's block layer with a private QMP socket, so that an
offline image is backed up exactly as a running VM's disk is (bitmaps, fleecing, NBD).

The daemon opens the image read-write (adding and removing persistent bitmaps writes the qcow2 header) and
takes QEMU's image lock, so a VM that starts meanwhile fails to open the image instead of writing under the
backup. It dies with cbtbackup (``PR_SET_PDEATHSIG``): SIGTERM makes it close the image cleanly, writing the
bitmaps back.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from cbtbackup.engine.qemu.qmp import Qmp
from cbtbackup.errors import BusyError, NotFoundError, StorageError, UsageError

NODE = "cbtbackup-disk"
START_TIMEOUT = 30.0
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class StorageDaemon:
    """A running daemon with the image as node :data:`NODE`; :meth:`stop` closes it cleanly."""

    def __init__(self, image: Path, workdir: Path) -> None:
        binary = shutil.which("qemu-storage-daemon")
        if binary is None:
            raise NotFoundError("qemu-storage-daemon is not installed (Debian: qemu-system-common)")
        self.image = image
        self.socket = workdir / "qmp.sock"
        self._log = tempfile.TemporaryFile(dir=workdir)  # noqa: SIM115 - kept open for the daemon's life
        self._proc = subprocess.Popen(
            [binary,
             "--blockdev", f"driver=file,node-name={NODE}-file,filename={_escape(image)}",
             "--blockdev", f"driver=qcow2,node-name={NODE},file={NODE}-file",
             "--chardev", f"socket,id=cbtbackup-qmp,path={_escape(self.socket)},server=on,wait=off",
             "--monitor", "chardev=cbtbackup-qmp"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, preexec_fn=_die_with_parent)
        try:
            self.qmp = self._connect()
        except BaseException:
            self._kill()
            raise

    def _connect(self) -> Qmp:
        deadline = time.monotonic() + START_TIMEOUT
        while not self.socket.exists():
            if self._proc.poll() is not None:
                raise self._failure()
            if time.monotonic() > deadline:
                raise StorageError(f"qemu-storage-daemon did not start on {self.image} in {START_TIMEOUT:.0f} s")
            time.sleep(0.02)
        return Qmp(str(self.socket))

    def _failure(self) -> Exception:
        self._log.seek(0)
        output = self._log.read().decode(errors="replace").strip()
        lines = output.splitlines()
        message = lines[-1].split(": ", 1)[-1] if lines else f"exit {self._proc.returncode}"
        if "lock" in output:
            return BusyError(f"{self.image} is in use (a running VM?): back it up through that VM's QMP socket "
                             f"with --qmp and --device ({message})")
        if "Image is not in qcow2 format" in output:
            return UsageError(f"{self.image} is not a qcow2 image ({message})")
        return StorageError(f"qemu-storage-daemon cannot open {self.image}: {message}")

    def stop(self) -> None:
        """Close the image cleanly (QMP quit), which writes the persistent bitmaps back."""
        with contextlib.suppress(Exception):
            self.qmp.run("quit")
        self.qmp.close()
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._kill()
        self._log.close()

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()
        self._proc.wait()


def _escape(path: Path) -> str:
    """A path inside a QEMU option string, where a comma is written twice."""
    return os.fspath(path).replace(",", ",,")
