"""The one exception tree of cbtbackup.

Every error the project raises on purpose derives from :class:`CbtError` and carries the process exit code
the command line uses for it, so the CLI maps errors to exit codes in exactly one place. Lower layers (the
engine, the stores) translate OS and library errors into these classes at their boundary.

Exit codes (documented in docs/user-guide.md):

====  =====================================================================
 1    any other error
 2    usage: bad options or arguments
 3    not found: a source, repository, backup or tracked volume is missing
 4    busy: locked by another process, or held by a snapshot
 5    corrupt data: a stored object or tracker state fails its checks
 6    snapshot failed: difference storage overflow or a corrupted snapshot
 7    storage unavailable: I/O or network failure talking to a store
 8    permission denied
 9    read-only: the target's file system or device does not take writes
10    name too long: a path or one of its names is longer than the file system allows
11    not a directory: a path that must be a directory is something else
====  =====================================================================

The command line adds 130 (interrupted by Ctrl-C), 143 (terminated by SIGTERM) and 70 (a bug).
"""

from __future__ import annotations

import errno


class CbtError(Exception):
    """Root of every error cbtbackup raises on purpose; ``details`` joins the ``--json`` error object."""

    exit_code = 1

    def __init__(self, *args: object, details: dict[str, object] | None = None) -> None:
        super().__init__(*args)
        self.details = details or {}


class UsageError(CbtError):
    """The caller asked for something that cannot be done as asked."""

    exit_code = 2


class NotFoundError(CbtError):
    """A named thing does not exist."""

    exit_code = 3


class BucketMissingError(NotFoundError):
    """The place that would hold the repository is not there (an S3 bucket): not "no repository in it"."""


class BusyError(CbtError):
    """Held by someone else: a lock, a snapshot."""

    exit_code = 4


class RetainedError(BusyError):
    """An object is under retention (S3 Object Lock) and cannot be deleted until ``until`` (a UNIX time, 0
    when the server did not say)."""

    def __init__(self, *args: object, until: float = 0.0) -> None:
        super().__init__(*args, details={"retained_until": until} if until else None)
        self.until = until


class CorruptDataError(CbtError):
    """Data read back fails its own checks."""

    exit_code = 5


class SnapshotFailedError(CbtError):
    """A snapshot can no longer be read: its difference storage overflowed or failed."""

    exit_code = 6


class StorageError(CbtError):
    """I/O against a volume, a difference storage or a store failed."""

    exit_code = 7


class TransientStorageError(StorageError):
    """A store failure that may succeed when tried again (throttling, a reset connection, a 5xx)."""


class PermissionDeniedError(CbtError):
    """The operating system refused access."""

    exit_code = 8


class ReadOnlyError(CbtError):
    """A write was refused because the file system or device is read-only."""

    exit_code = 9


class NameTooLongError(CbtError):
    """A path, or a name in it, is too long for the file system."""

    exit_code = 10


class NotADirError(CbtError):
    """A path that must be a directory is a file (or runs through one)."""

    exit_code = 11


def os_error(e: OSError, doing: str) -> CbtError:
    """The error of this tree for an ``OSError`` met while ``doing`` (e.g. "cannot open /x")."""
    message = f"{doing}: {e.strerror or e}"
    classes: dict[int, type[CbtError]] = {
        errno.ENOENT: NotFoundError,
        errno.EACCES: PermissionDeniedError,
        errno.EPERM: PermissionDeniedError,
        errno.EROFS: ReadOnlyError,
        errno.ENAMETOOLONG: NameTooLongError,
        errno.ENOTDIR: NotADirError,
        errno.EISDIR: UsageError,
        errno.EBUSY: BusyError,
        errno.ETXTBSY: BusyError,
    }
    return classes.get(e.errno or 0, StorageError)(message)


__all__ = [
    "BucketMissingError", "BusyError", "CbtError", "CorruptDataError", "NameTooLongError", "NotADirError",
    "NotFoundError", "PermissionDeniedError", "ReadOnlyError", "SnapshotFailedError", "StorageError",
    "TransientStorageError", "UsageError", "os_error",
]
