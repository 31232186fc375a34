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
====  =====================================================================
"""

from __future__ import annotations


class CbtError(Exception):
    """Root of every error cbtbackup raises on purpose."""

    exit_code = 1


class UsageError(CbtError):
    """The caller asked for something that cannot be done as asked."""

    exit_code = 2


class NotFoundError(CbtError):
    """A named thing does not exist."""

    exit_code = 3


class BusyError(CbtError):
    """Held by someone else: a lock, a snapshot."""

    exit_code = 4


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
