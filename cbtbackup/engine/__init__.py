"""The block layer: changed-block tracking, copy-on-write snapshots and difference storage.

The userspace engine follows blksnap's model (see docs/design.md): a :class:`TrackedVolume` marks every
write in a byte map of tracking blocks; a :class:`Snapshot` over one or more volumes freezes their content
at one instant by copying each chunk's old data to a private difference storage before its first
overwrite. Nothing here knows about repositories.
"""

from cbtbackup.engine.cbt import CbtCheckpoint, CbtDecision, CbtInfo, changed_runs, plan_incremental
from cbtbackup.engine.events import EventCode, SnapshotEvent
from cbtbackup.engine.snapshot import Snapshot, SnapshotImage
from cbtbackup.engine.volume import TrackedVolume, default_state_dir, is_tracked

__all__ = [
    "CbtCheckpoint",
    "CbtDecision",
    "CbtInfo",
    "EventCode",
    "Snapshot",
    "SnapshotEvent",
    "SnapshotImage",
    "TrackedVolume",
    "changed_runs",
    "default_state_dir",
    "is_tracked",
    "plan_incremental",
]
