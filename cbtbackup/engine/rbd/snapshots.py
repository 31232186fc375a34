"""cbtbackup's RBD snapshots, and whether the previous one still vouches for the changes since.

Each backup reads one snapshot named ``cbtbackup-<nonce>-<number>``; the manifest's CBT checkpoint is
(generation, number), where the generation is a digest of the nonce *and the image's identity* (cluster
fsid, pool id, namespace, image id). The changes since backup *n* are exactly librbd's diff between
snapshot *n* and the new one, so an incremental trusts the diff only if snapshot *n* is on this very
image. A snapshot deleted or renamed, an image removed and created again under its name, or one copied
with its snapshots (``rbd import-diff``, ``rbd cp``, migration: a new image id) finds no snapshot whose
generation matches — the backup scans and starts a new generation, saying why. A rollback needs no rule:
it rewrites the image's objects, and the diff reports them (measured: a rollback to an older snapshot
shows every reverted extent, with and without fast-diff).
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import uuid

from cbtbackup.model.checkpoint import CbtCheckpoint

PREFIX = "cbtbackup-"
MAX_NUMBER = 255  # the CBT map holds one byte per block
BASE_SUFFIX = "-base"  # a snapshot kept for later differentials (``--keep-base``)
_NAME = re.compile(rf"^{PREFIX}([0-9a-f]{{12}})-(\d+)({BASE_SUFFIX})?$")
_NAMESPACE = uuid.UUID("0a4c5f8e-8a7b-4c41-9c59-3b1f0e6d2a10")  # of cbtbackup's RBD generations


@dataclasses.dataclass(frozen=True)
class ImageIdentity:
    """What makes an image this image: it changes when the image is replaced or copied."""

    fsid: str
    pool_id: int
    namespace: str
    image_id: str

    def generation(self, nonce: str) -> uuid.UUID:
        return uuid.uuid5(_NAMESPACE, f"{self.fsid}/{self.pool_id}/{self.namespace}/{self.image_id}/{nonce}")


@dataclasses.dataclass(frozen=True)
class OurSnapshot:
    name: str
    nonce: str
    number: int
    base: bool = False  # kept for differentials against its backup, past the next backup


def snapshot_name(nonce: str, number: int, base: bool = False) -> str:
    return f"{PREFIX}{nonce}-{number}{BASE_SUFFIX if base else ''}"


def ours(names: list[str]) -> list[OurSnapshot]:
    """cbtbackup's snapshots among an image's; other tools' and the user's are left alone."""
    found = []
    for name in names:
        match = _NAME.match(name)
        if match is not None:
            found.append(OurSnapshot(name, match.group(1), int(match.group(2)), bool(match.group(3))))
    return found


def leftovers(snapshots: list[OurSnapshot], newest: CbtCheckpoint | None,
              identity: ImageIdentity) -> list[OurSnapshot]:
    """Snapshots a killed run took: numbered past the chain's newest backup in its generation (a committed
    backup's number is above every earlier one's, so nothing newer than the newest can be a backup's)."""
    if newest is None:
        return []
    return [s for s in snapshots
            if identity.generation(s.nonce) == newest.generation_id and s.number > newest.changes_number]


@dataclasses.dataclass(frozen=True)
class SnapshotPlan:
    generation: uuid.UUID
    number: int  # of the snapshot this backup takes
    new_name: str
    since: OurSnapshot | None  # the previous backup's snapshot, to diff from (None: read everything)
    reset_reason: str = ""


def plan_snapshot(snapshots: list[OurSnapshot], since: CbtCheckpoint | None, identity: ImageIdentity,
                  image: str, keep_base: bool = False) -> SnapshotPlan:
    """Which snapshot this backup takes, and which earlier one vouches for the changes since ``since``.

    The new number follows every snapshot of the generation, not only ``since``'s: a differential's base
    is older than the newest snapshot, and numbers never repeat within a generation."""
    if since is not None:
        previous = next((s for s in snapshots if s.number == since.changes_number
                         and identity.generation(s.nonce) == since.generation_id), None)
        if previous is None:
            reason = (f"the snapshot the previous backup read is not on {image} (deleted or renamed, or the "
                      f"image was replaced or copied: its id is now {identity.image_id})")
        else:
            number = max(s.number for s in snapshots if s.nonce == previous.nonce) + 1
            if number > MAX_NUMBER:
                reason = f"the snapshot chain reached {MAX_NUMBER} backups; a new one starts"
            else:
                return SnapshotPlan(since.generation_id, number, snapshot_name(previous.nonce, number, keep_base),
                                    previous)
    else:
        reason = ""
    nonce = secrets.token_hex(6)
    return SnapshotPlan(identity.generation(nonce), 1, snapshot_name(nonce, 1, keep_base), None, reason)
