"""Errors of the block layer, each a branch of the one tree in :mod:`cbtbackup.errors`."""

from __future__ import annotations

from cbtbackup.errors import BusyError, CorruptDataError, NotFoundError, SnapshotFailedError, UsageError


class NotTrackedError(NotFoundError):
    """The volume has no tracker state: start tracking it first."""


class AlreadyTrackedError(UsageError):
    """``track`` was asked for a volume that is tracked already."""


class VolumeLockedError(BusyError):
    """Another tracker (in this or another process) holds the volume."""


class OutOfRangeError(UsageError):
    """A read or write reaches past the end of the volume or image."""


class SnapshotBusyError(BusyError):
    """The volume already belongs to another snapshot."""


class SnapshotStateError(UsageError):
    """The snapshot is not in a state that allows the request (not taken yet, or destroyed)."""


class SnapshotCorruptedError(SnapshotFailedError):
    """The snapshot lost data (difference storage overflow); its images can no longer be read."""


class TrackerStateError(CorruptDataError):
    """The tracker state on disk is unreadable."""
