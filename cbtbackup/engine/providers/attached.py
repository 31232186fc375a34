"""The provider for a volume served by an attach daemon: the daemon takes the snapshot where the writes
happen, and the backup reads the image through the daemon's ``MOUNTDIR/snapshot-<id>`` file while the
volume keeps being written."""

from __future__ import annotations

import base64
from pathlib import Path

from cbtbackup.engine.attach.control import ControlClient
from cbtbackup.engine.cbt import CbtInfo
from cbtbackup.engine.providers.base import CbtState, SnapshotSession
from cbtbackup.engine.providers.scan import FileReader
from cbtbackup.errors import SnapshotFailedError


class AttachedSession(SnapshotSession):
    provider = "userspace"

    def __init__(self, image: Path, state_dir: Path, freeze: str | None, client: ControlClient | None = None,
                 hold: str | None = None) -> None:
        """``client`` and ``hold``: a connection whose writes are held for a group take (group.py)."""
        self.source = str(image)
        self._client = client or ControlClient(state_dir)
        try:
            answer = self._client.call("snapshot", freeze=freeze, **({"hold": hold} if hold else {}))
            self._name = str(answer["name"])
            info = CbtInfo.from_dict(answer["cbt"])
            self.cbt: CbtState | None = CbtState(info, base64.b64decode(answer["map"]),
                                                 str(answer.get("reset_reason", "")))
            self._reader = FileReader(Path(answer["path"]))
        except BaseException:
            self._client.close()
            raise
        self.image = self._reader

    def check_intact(self) -> None:
        answer = self._client.call("check", name=self._name)
        if answer.get("failure"):
            raise SnapshotFailedError(f"snapshot is no longer consistent: {answer['failure']}")
        if int(answer["error_code"]):
            raise SnapshotFailedError("the snapshot overflowed its difference storage during the backup")

    def distrust(self, reason: str) -> None:
        self._client.call("reset-tracking", reason=reason)

    def close(self) -> None:
        try:
            self._reader.close()
            self._client.call("release", name=self._name)
        finally:
            self._client.close()


class AttachedProvider:
    name = "userspace"

    def __init__(self, image: Path, state_dir: Path, freeze: str | None = None) -> None:
        self.image, self.state_dir, self.freeze = image, state_dir, freeze
        self.source = str(image)

    def open_snapshot(self) -> AttachedSession:
        return AttachedSession(self.image, self.state_dir, self.freeze)
