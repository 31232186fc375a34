"""qcow2 images through ``qemu-img``: a raw image converted into a new qcow2, or written into an existing one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

from cbtbackup.errors import BusyError, NotFoundError, StorageError


def convert_to_qcow2(raw: Path, target: Path, into_existing: bool) -> None:
    """``raw`` as a qcow2 image at ``target`` — a new file, or (``into_existing``) written into the qcow2 image
    there, which keeps its persistent bitmaps and lets them record what changed. QEMU's image lock refuses an
    image a VM has open."""
    if shutil.which("qemu-img") is None:
        raise NotFoundError("qemu-img is not installed (Debian: qemu-utils)")
    command = ["qemu-img", "convert", "-f", "raw", "-O", "qcow2"]
    if into_existing:
        command.append("-n")  # write into the target as it is
    done = subprocess.run([*command, str(raw), str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1].removeprefix("qemu-img: ")
        if "lock" in done.stderr:
            raise BusyError(f"{target} is in use (a running VM?): {message}")
        raise StorageError(f"qemu-img could not write {target}: {message}")


def virtual_size(image: Path) -> int:
    done = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(image)], capture_output=True, text=True)
    if done.returncode != 0:
        raise StorageError(f"{image} is not an image qemu-img reads: {done.stderr.strip().splitlines()[-1:]}")
    return int(json.loads(done.stdout)["virtual-size"])


def is_qcow2(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a regular file with qcow2's magic (anything else is never opened: a FIFO would
    block)."""
    with contextlib.suppress(OSError):
        if stat.S_ISREG(os.stat(path).st_mode):
            with open(path, "rb") as f:
                return f.read(4) == b"QFI\xfb"
    return False
