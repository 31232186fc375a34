"""Consistency groups: several sources of one provider taken at one instant.

A database with its log on a second disk is consistent only if both disks are taken at once. Each
provider does it its own way: the userspace engine takes one snapshot of several tracked images (holding
every volume's write lock at the take), attached volumes are held in their daemons first and then taken
(``attach/write_gate.py``), blksnap adds several devices to one snapshot, QEMU runs one QMP transaction
for several drives of a VM. Members of different providers cannot share an instant, so such a group is
refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from cbtbackup.engine.attach.control import ControlClient
from cbtbackup.engine.providers.attached import AttachedProvider, AttachedSession
from cbtbackup.engine.providers.base import CbtState, Provider, SnapshotSession
from cbtbackup.engine.providers.userspace import UserspaceProvider
from cbtbackup.engine.snapshot import Snapshot, SnapshotImage
from cbtbackup.engine.volume import TrackedVolume
from cbtbackup.errors import UsageError


class SnapshotGroup(Protocol):
    """Snapshots of several sources taken at one instant; closing the group destroys them all."""

    @property
    def sessions(self) -> Sequence[SnapshotSession]: ...

    def close(self) -> None: ...


def describe(provider: Provider) -> str:
    kind = "attached volume" if isinstance(provider, AttachedProvider) else f"{provider.name} provider"
    return f"{provider.source} ({kind})"


def check_one_kind(providers: list[Provider]) -> None:
    """Refuse a group whose members cannot share one instant: different providers, or attached volumes
    with images the engine would open directly."""
    kinds = {type(p) for p in providers}
    if len(kinds) > 1:
        raise UsageError("the sources of one group must share a provider to be taken at one instant: "
                         + ", ".join(describe(p) for p in providers))
    if len({p.source for p in providers}) < len(providers):
        raise UsageError("a source is named twice in one group")


class _UserspaceMember(SnapshotSession):
    provider = "userspace"

    def __init__(self, volume: TrackedVolume, snapshot: Snapshot) -> None:
        self.source = str(volume.path.absolute())
        self._volume, self._snapshot = volume, snapshot
        self.image: SnapshotImage = snapshot.image(volume)
        self.cbt: CbtState | None = CbtState(volume.cbt_info(), volume.cbt_map(), volume.reset_reason)

    def check_intact(self) -> None:
        self._snapshot.check_intact()

    def distrust(self, reason: str) -> None:
        self._volume.reset_tracking(reason)

    def close(self) -> None:  # the group destroys the one snapshot of all members
        pass


class UserspaceGroup:
    """Tracked images the engine opens here: one snapshot of all of them, taken under all their write locks."""

    def __init__(self, providers: list[UserspaceProvider]) -> None:
        self._volumes: list[TrackedVolume] = []
        self._snapshot: Snapshot | None = None
        try:
            for p in providers:
                self._volumes.append(TrackedVolume.open(p.path, state_dir=p.state_dir))
            self._snapshot = Snapshot.create(self._volumes, providers[0].diff_storage, providers[0].limit)
            self._snapshot.take()
            self.sessions: list[SnapshotSession] = [_UserspaceMember(v, self._snapshot) for v in self._volumes]
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        try:
            if self._snapshot is not None:
                self._snapshot.destroy()
        finally:
            for volume in self._volumes:
                volume.close()


class AttachedGroup:
    """Attached volumes, each served by its own daemon: hold the writes of all, take each, resume all."""

    def __init__(self, providers: list[AttachedProvider]) -> None:
        if any(p.freeze for p in providers):
            # fsfreeze flushes through the very volume whose writes the hold stops: it would never return.
            raise UsageError("--freeze cannot be used with a group of attached volumes; quiesce the "
                             "applications with a before_snapshot hook (docs/fleet.md) instead")
        self.sessions: list[SnapshotSession] = []
        clients: list[ControlClient] = []
        holds: list[tuple[ControlClient, str]] = []
        try:
            for p in providers:
                clients.append(ControlClient(Path(p.state_dir)))
            for client in clients:  # every member stops taking writes before any is taken
                holds.append((client, str(client.call("hold")["token"])))
            for p, (client, token) in zip(providers, holds, strict=True):
                self.sessions.append(AttachedSession(p.image, p.state_dir, None, client=client, hold=token))
        except BaseException:
            for session in self.sessions:
                with contextlib.suppress(Exception):
                    session.close()
            for client in clients[len(self.sessions):]:
                client.close()
            raise
        finally:
            for client, token in holds:
                with contextlib.suppress(Exception):  # a closed connection resumed it already
                    client.call("resume", token=token)

    def close(self) -> None:
        errors: list[BaseException] = []
        for session in self.sessions:
            try:
                session.close()
            except Exception as e:  # every member's snapshot is released, whichever fails
                errors.append(e)
        if errors:
            raise errors[0]
