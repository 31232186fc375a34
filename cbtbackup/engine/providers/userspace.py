"""The userspace provider: a volume tracked by the engine, snapshotted by the engine.

The session opens the tracked volume (taking its lock, so nothing else writes through the engine
meanwhile), creates and takes a snapshot, and reads CBT as it was at the take.
"""

from __future__ import annotations

import os
from pathlib import Path

from cbtbackup.engine.providers.base import CbtState, SnapshotSession
from cbtbackup.engine.snapshot import Snapshot, SnapshotImage
from cbtbackup.engine.volume import TrackedVolume


class UserspaceSession(SnapshotSession):
    provider = "userspace"

    def __init__(
        self, path: Path, state_dir: Path | None, diff_storage: Path | None, limit: int | None
    ) -> None:
        self.source = str(path.absolute())
        self._volume = TrackedVolume.open(path, state_dir=state_dir)
        try:
            self._snapshot = Snapshot.create([self._volume], diff_storage, limit)
            self._snapshot.take()
        except BaseException:
            self._volume.close()
            raise
        self.image: SnapshotImage = self._snapshot.image(self._volume)
        self.cbt: CbtState | None = CbtState(
            self._volume.cbt_info(), self._volume.cbt_map(), self._volume.reset_reason
        )

    def check_intact(self) -> None:
        self._snapshot.check_intact()

    def distrust(self, reason: str) -> None:
        self._volume.reset_tracking(reason)

    def close(self) -> None:
        try:
            self._snapshot.destroy()
        finally:
            self._volume.close()


class UserspaceProvider:
    name = "userspace"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        state_dir: str | os.PathLike[str] | None = None,
        diff_storage: str | os.PathLike[str] | None = None,
        limit: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.source = str(self.path.absolute())
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.diff_storage = Path(diff_storage) if diff_storage is not None else None
        self.limit = limit

    def open_snapshot(self) -> UserspaceSession:
        return UserspaceSession(self.path, self.state_dir, self.diff_storage, self.limit)
