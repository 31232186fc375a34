"""An LVM thin volume through the pool's own change tracking: thin snapshots and ``thin_delta`` between them.

A backup takes a thin snapshot of the LV, named ``cbtbackup-<nonce>-<number>`` (``…-base`` with
``--keep-base``), activates it and reads it. An incremental asks ``thin_delta`` which data blocks differ
between the previous backup's snapshot and the new one — both frozen, so the answer is exact — reads only
those, and records the blocks the newer snapshot no longer maps (discarded) as zeros. Once the backup is in
the repository the older snapshots go (a kept base stays), so the LV carries one snapshot of ours between
backups; a backup that fails removes the one it took.

The manifest's checkpoint is (generation, number); the generation is a digest of the nonce and the LV's
identity (the VG's and the LV's LVM uuids). So the previous snapshot vouches only if it is still there,
still a snapshot of this very LV (an LV removed and made again under its name has a new uuid, and its
snapshots lose their origin); if ``thin_delta`` cannot compare the two (the pool's metadata was repaired
or replaced), the incremental scans, with one line saying why. A resized LV is taken whole.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import uuid
from collections.abc import Callable
from pathlib import Path

from cbtbackup.engine.cbt import CbtInfo
from cbtbackup.engine.lvmthin.delta import thin_delta
from cbtbackup.engine.lvmthin.lvm import LogicalVolume, LvmError, run, split_device, volume, volumes
from cbtbackup.engine.providers.base import CbtState, SnapshotSession
from cbtbackup.engine.providers.scan import FileReader
from cbtbackup.engine.zero_ranges import ZeroRangesImage
from cbtbackup.errors import CbtError, SnapshotFailedError, UsageError
from cbtbackup.model.checkpoint import CbtCheckpoint

Notice = Callable[[str], None]
BLOCK = 64 << 10  # the tracking block of the CBT map the provider reports
MAX_NUMBER = 255  # the CBT map holds one byte per block
PREFIX = "cbtbackup-"
BASE_SUFFIX = "-base"
_NAME = re.compile(rf"^{PREFIX}([0-9a-f]{{12}})-(\d+)({BASE_SUFFIX})?$")
_NAMESPACE = uuid.UUID("6f1d0e52-3b7a-4d43-9a55-0c7e9b1f4a21")  # of cbtbackup's LVM thin generations


@dataclasses.dataclass(frozen=True)
class OurSnapshot:
    lv: LogicalVolume
    nonce: str
    number: int
    base: bool


def ours(all_volumes: list[LogicalVolume], origin: str) -> list[OurSnapshot]:
    """cbtbackup's snapshots of ``origin``; anyone else's are left alone."""
    found = []
    for v in all_volumes:
        match = _NAME.match(v.name)
        if match is not None and v.origin == origin:
            found.append(OurSnapshot(v, match.group(1), int(match.group(2)), bool(match.group(3))))
    return sorted(found, key=lambda s: s.number)


def generation(lv: LogicalVolume, nonce: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"{lv.vg_uuid}/{lv.uuid}/{nonce}")


class LvmThinSession(SnapshotSession):
    provider = "lvmthin"
    full_when_resized = True

    def __init__(self, provider: LvmThinProvider) -> None:
        self.source = provider.source
        self._vg, self._name = provider.vg, provider.name_in_vg
        self._notice = provider.notice
        self._keep_base = provider.keep_base
        self._committed = False
        self._taken: str | None = None
        self._reader: FileReader | None = None
        try:
            self._take(provider.since, provider.newest)
        except BaseException:
            self.close()
            raise

    def _take(self, since: CbtCheckpoint | None, newest: CbtCheckpoint | None) -> None:
        all_volumes = volumes(self._vg)
        origin = next((v for v in all_volumes if v.name == self._name), None)
        if origin is None or not origin.is_thin:
            raise UsageError(f"{self.source} is not an LVM thin volume (lvs shows "
                             f"{'nothing' if origin is None else origin.attr})")
        snapshots = ours(all_volumes, self._name)
        for leftover in [s for s in snapshots if newest is not None and s.number > newest.changes_number
                         and generation(origin, s.nonce) == newest.generation_id]:
            self._remove(leftover.lv.name)  # a killed run's: numbered past the chain's newest backup
            snapshots.remove(leftover)
        previous, reason = self._vouching(snapshots, since, origin)
        if previous is not None:
            nonce = previous.nonce
            number = max(s.number for s in snapshots if s.nonce == nonce) + 1
        else:
            nonce, number = secrets.token_hex(6), 1
        name = f"{PREFIX}{nonce}-{number}{BASE_SUFFIX if self._keep_base else ''}"
        run("lvcreate", "-q", "-s", "-n", name, f"{self._vg}/{self._name}", what=f"snapshot {self._vg}/{self._name}")
        self._taken = name  # ours from here on: removed on every failure path
        run("lvchange", "-q", "-ay", "-K", f"{self._vg}/{self._taken}", what=f"activate {self._vg}/{self._taken}")
        taken = volume(self._vg, self._taken)
        size = taken.size
        gen = generation(origin, nonce)
        cbt_map = bytearray(-(-size // BLOCK))
        zeros: list[tuple[int, int]] = []
        if previous is not None:
            assert previous.lv.thin_id is not None and taken.thin_id is not None
            try:
                delta = thin_delta(self._vg, origin.pool, previous.lv.thin_id, taken.thin_id, self._notice)
            except LvmError as e:  # the pool's metadata cannot say: this backup scans, under a new generation
                reason = f"the thin pool cannot compare the snapshots ({e})"
                nonce, number = secrets.token_hex(6), 1
                gen = generation(origin, nonce)
                renamed = f"{PREFIX}{nonce}-{number}{BASE_SUFFIX if self._keep_base else ''}"
                run("lvrename", "-q", self._vg, self._taken, renamed, what=f"rename {self._vg}/{self._taken}")
                self._taken = renamed
                taken = volume(self._vg, renamed)
            else:
                for offset, length in [*delta.changed, *delta.discarded]:
                    end = min(size, offset + length)
                    if end > offset:
                        first, last = offset // BLOCK, -(-end // BLOCK)
                        cbt_map[first:last] = bytes([number]) * (last - first)
                zeros = [(o, min(size, o + n) - o) for o, n in delta.discarded if o < size]
        self._reader = FileReader(Path(taken.path))
        self.image = ZeroRangesImage(size, zeros, self._reader.read)
        self.cbt: CbtState | None = CbtState(CbtInfo(size, BLOCK, len(cbt_map), gen, number), bytes(cbt_map),
                                             reason)

    def _vouching(self, snapshots: list[OurSnapshot], since: CbtCheckpoint | None,
                  origin: LogicalVolume) -> tuple[OurSnapshot | None, str]:
        if since is None:
            return None, ""
        previous = next((s for s in snapshots if s.number == since.changes_number
                         and generation(origin, s.nonce) == since.generation_id), None)
        if previous is None:
            return None, (f"the snapshot the previous backup read is not on {self.source} (removed or renamed, "
                          "or the LV was replaced)")
        if max(s.number for s in snapshots if s.nonce == previous.nonce) + 1 > MAX_NUMBER:
            return None, f"the snapshot chain reached {MAX_NUMBER} backups; a new one starts"
        return previous, ""

    def check_intact(self) -> None:
        if self._taken is None or not any(v.name == self._taken for v in volumes(self._vg)):
            raise SnapshotFailedError(f"the snapshot {self._vg}/{self._taken} was removed while it was read")
        if self._reader is not None and not os.path.exists(f"/dev/{self._vg}/{self._taken}"):
            raise SnapshotFailedError(f"the snapshot {self._vg}/{self._taken} was deactivated while it was read")

    def committed(self) -> None:
        self._committed = True

    def _remove(self, name: str) -> None:
        run("lvremove", "-q", "-y", f"{self._vg}/{name}", what=f"remove the snapshot {self._vg}/{name}")

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._taken is None:
            return
        try:
            if self._committed:
                doomed = [s.lv.name for s in ours(volumes(self._vg), self._name)
                          if s.lv.name != self._taken and (self._keep_base or not s.base)]
            else:
                doomed = [self._taken]
            for name in doomed:
                self._remove(name)
        except CbtError as e:
            self._notice(f"a snapshot of {self.source} stays until the next backup: {e}")
        self._taken = None


class LvmThinProvider:
    """The thin LV ``/dev/VG/LV``."""

    name = "lvmthin"

    def __init__(self, source: str, notice: Notice | None = None) -> None:
        self.vg, self.name_in_vg = split_device(source)
        self.source = f"/dev/{self.vg}/{self.name_in_vg}"
        self.notice: Notice = notice or (lambda _: None)
        self.since: CbtCheckpoint | None = None  # the parent's checkpoint, set before open_snapshot
        self.newest: CbtCheckpoint | None = None  # the chain's newest backup's checkpoint (to find leftovers)
        self.keep_base = False

    def open_snapshot(self) -> LvmThinSession:
        return LvmThinSession(self)


__all__ = ["BLOCK", "LvmThinProvider", "LvmThinSession", "ours"]
