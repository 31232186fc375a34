"""Key files: a repository's master key, unwrapped, for runs that nobody attends.

A passphrase opens a repository through Argon2id, which is meant to be slow (about 0.1 s and 64 MiB here,
every run). A key file holds the master key itself, so it opens the repository at once — the choice Proxmox
Backup Server offers as a key file without a KDF. It protects nothing by itself: anyone who can read it can
read and change every backup, exactly like a password file kept beside it. So it must be readable by its
owner alone (a file that others may read is refused, as ssh refuses such a private key), and it is only
ever written new, or replaced on request, never in place.

The file is JSON: format, version, the id of the repository it opens, when and where it was written, the
master key in hex, and a BLAKE3 checksum over the rest that tells a damaged or edited file from a key of
another repository. It never enters the repository; key slots are unchanged. A write-only key file
(``write_only.py``) is written and read by the same rules.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import blake3

from cbtbackup.errors import CbtError, CorruptDataError, UsageError, os_error
from cbtbackup.repo import write_only

FORMAT = "cbtbackup-key-file"
MASTER_SIZE = 32


@dataclasses.dataclass(frozen=True)
class KeyFile:
    """A key file read and checked: the repository it opens and that repository's master key."""

    path: str
    repository: str
    master: bytes = dataclasses.field(repr=False)


def _checksum(fields: dict[str, Any]) -> str:
    return blake3.blake3(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_key_file(path: str | os.PathLike[str], repository: str, master: bytes, *, replace: bool = False) -> None:
    """Write the key file: mode 0600, created new; an existing file is replaced (atomically) only with
    ``replace``."""
    fields = {"format": FORMAT, "version": 1, "repository": repository, "created": time.time(),
              "host": os.uname().nodename, "master": master.hex()}
    write_secret_file(path, json.dumps({**fields, "checksum": _checksum(fields)}, indent=2).encode() + b"\n", replace)


def write_write_only_key(path: str | os.PathLike[str], fields: dict[str, Any], replace: bool = False) -> None:
    """Write a write-only key file (fields from :func:`write_only.write_only_fields`), like a key file."""
    write_secret_file(path, json.dumps({**fields, "checksum": write_only.checksum(fields)}, indent=2).encode()
                      + b"\n", replace)


def write_secret_file(path: str | os.PathLike[str], body: bytes, replace: bool) -> None:
    """Mode 0600, created new; an existing file is replaced (atomically) only with ``replace``."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{target} is a directory; give the key file's path")
    if target.exists() and not replace:
        raise UsageError(f"{target} exists; give --force to replace it")
    tmp = target.with_name(f".{target.name}.{os.urandom(4).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            if os.write(fd, body) != len(body):
                raise OSError(errno.EIO, "short write")
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)  # fails if somebody made the file meanwhile: never overwritten unasked
    except FileExistsError:
        raise UsageError(f"{target} exists; give --force to replace it") from None
    except OSError as e:
        raise os_error(e, f"cannot write the key file {target}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    dir_fd = os.open(target.parent if str(target.parent) else ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_key_file(path: str | os.PathLike[str]) -> KeyFile | write_only.WriteOnlyKey:
    """Read and check a key file (or a write-only key file): refused if others may read it, damaged, or not
    a key file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise os_error(e, f"cannot read the key file {path}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"the key file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise UsageError(f"the key file {path} can be read or written by others (mode "
                             f"{stat.S_IMODE(st.st_mode):04o}); make it the owner's alone: chmod 600 {path}")
        raw = os.read(fd, 1 << 16)
    except OSError as e:
        raise os_error(e, f"cannot read the key file {path}") from None
    finally:
        os.close(fd)
    try:
        fields: dict[str, Any] = json.loads(raw)
        if isinstance(fields, dict) and fields.get("format") == write_only.FORMAT:
            return write_only.parse_write_only_key(str(path), fields)
        checksum = fields.pop("checksum")
        if fields.get("format") != FORMAT or _checksum(fields) != checksum:
            raise ValueError("not a key file")
        master = bytes.fromhex(fields["master"])
        repository = str(fields["repository"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CorruptDataError(f"{path} is not a cbtbackup key file, or it is damaged or was edited") from None
    if fields.get("version") != 1 or len(master) != MASTER_SIZE:
        raise CbtError(f"the key file {path} has an unknown version or key size; this cbtbackup cannot use it")
    return KeyFile(str(path), repository, master)
