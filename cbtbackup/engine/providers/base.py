"""The one small interface every provider offers the backup pipeline.

A provider opens a source and takes a snapshot of it, handing back a :class:`SnapshotSession`: a reader
of the snapshot image and, where the source is tracked, the CBT state at the take. Closing the session
destroys the snapshot — the pipeline does that on every path, success, error or Ctrl-C.
"""

from __future__ import annotations

import abc
import dataclasses
from types import TracebackType
from typing import Protocol, Self

from cbtbackup.engine.cbt import CbtInfo


class BlockReader(Protocol):
    """Random reads of a fixed-size image."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...


@dataclasses.dataclass(frozen=True)
class CbtState:
    """CBTINFO and the CBT map as they were at the take."""

    info: CbtInfo
    map: bytes
    reset_reason: str = ""  # why the current generation started, for the one-line note of a scan


class SnapshotSession(abc.ABC):
    """One taken snapshot of one source; closing it destroys the snapshot."""

    source: str  # a stable identity of the source: its absolute path
    provider: str  # "userspace", "blksnap", "qemu", "rbd", "lvmthin" or "scan"
    image: BlockReader
    cbt: CbtState | None  # None where nothing tracks changes
    # An incremental of a source whose size changed: refused (asking for a full) unless the provider can
    # take a full of its new size on its own, as an RBD image that was resized.
    full_when_resized = False

    @abc.abstractmethod
    def close(self) -> None: ...

    def check_intact(self) -> None:  # noqa: B027 - sources without a snapshot have nothing to lose
        """Raise if the snapshot lost data since the take (call after reading, before committing)."""

    def committed(self) -> None:  # noqa: B027 - most providers keep nothing per backup
        """The backup of this snapshot is in the repository (a provider may now drop older tracking state)."""

    def distrust(self, reason: str) -> None:  # noqa: B027 - a checkpoint not recorded is distrust enough
        """The backup of this snapshot is in the repository, but the tracking was caught under-reporting:
        start its tracking anew (instead of :meth:`committed`) where the provider can."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Provider(Protocol):
    name: str
    source: str  # the identity of the source (an absolute image or device path), known before the snapshot

    def open_snapshot(self) -> SnapshotSession:
        """Take a snapshot of the source now."""
        ...
