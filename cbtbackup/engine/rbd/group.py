"""Several RBD images at one instant: one RBD group snapshot.

Ceph takes a group snapshot of every image of an RBD group at once (``rbd group snap create``), which is
what a database with its log on a second image needs. The images the user names must all be in one RBD
group (made with ``rbd group create`` and ``rbd group image add``; cbtbackup never changes a group's
members). Each image first gets its own snapshot of ours, the *anchor* (:meth:`RbdSession._anchor`, as a
single backup takes it); then the group snapshot is taken and each image is read at its part of it, with
the extents librbd reports changed between the previous anchor and the group snapshot. The group snapshot
is removed when the run ends, whatever happened; the anchors stay as a single backup's snapshot does.

The instant is Ceph's: while it takes a group snapshot, librbd holds the exclusive lock of every image, so
no client writes any of them in between. Without the exclusive-lock feature nothing stops another client,
and such an image is refused.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from cbtbackup.engine.providers.base import SnapshotSession
from cbtbackup.engine.rbd.cluster import Cluster, ceph_error
from cbtbackup.engine.rbd.provider import RbdProvider, RbdSession
from cbtbackup.errors import UsageError

GROUP_PREFIX = "cbtbackup-group-"

Notice = Callable[[str], None]


class RbdGroup:
    """The images of ``providers`` taken in one RBD group snapshot; closing removes it."""

    def __init__(self, providers: list[RbdProvider], notice: Notice) -> None:
        self._notice = notice
        self._members: list[RbdSession] = []
        self._cluster: Cluster | None = None
        self._ioctx: Any = None
        self._group: Any = None
        self._snap_name: str | None = None
        try:
            for provider in providers:  # each image's anchor comes before the group snapshot
                self._members.append(RbdSession(provider, in_group=True))
            pool_id, name = self._common_group()
            for member in self._members:
                if not member.has_exclusive_lock():
                    raise UsageError(f"{member.source} lacks the exclusive-lock feature, without which Ceph "
                                     "cannot stop other clients' writes for a group snapshot (rbd feature "
                                     "enable POOL/IMAGE exclusive-lock)")
            self._cluster = Cluster(providers[0].ceph)
            errors = self._cluster.errors()
            try:
                self._ioctx = self._cluster.ioctx_of_pool(pool_id, providers[0].spec.namespace)
                self._group = self._cluster.rbd.Group(self._ioctx, name)
                self._remove_leftovers(name)
                snap_name = GROUP_PREFIX + secrets.token_hex(6)
                self._group.create_snap(snap_name)
                self._snap_name = snap_name
            except errors as e:
                raise ceph_error(e, f"cannot take a snapshot of the RBD group {name}") from None
            for member in self._members:
                member.read_group_snapshot(snap_name)
        except BaseException:
            self.close()
            raise

    @property
    def sessions(self) -> list[SnapshotSession]:
        return list(self._members)

    def _common_group(self) -> tuple[int, str]:
        groups = {m.source: m.group() for m in self._members}
        outside = [source for source, group in groups.items() if group is None]
        if outside:
            raise UsageError(f"{outside[0]} is in no RBD group: images backed up at one instant must be in one "
                             "(rbd group create POOL/GROUP; rbd group image add POOL/GROUP POOL/IMAGE)")
        distinct = {group for group in groups.values() if group is not None}
        if len(distinct) > 1:
            raise UsageError("the images are in different RBD groups ("
                             + ", ".join(sorted(name for _, name in distinct)) + "); one group snapshot "
                             "covers one group")
        return distinct.pop()

    def _remove_leftovers(self, name: str) -> None:
        """A group snapshot of ours that a killed run left (a run always removes its own)."""
        for snap in self._group.list_snaps():
            if str(snap["name"]).startswith(GROUP_PREFIX):
                self._group.remove_snap(snap["name"])
                self._notice(f"removed the group snapshot {name}@{snap['name']} a killed run left")

    def close(self) -> None:
        errors: list[BaseException] = []
        for member in self._members:  # each removes its anchor if its backup failed, older ones if not
            try:
                member.close()
            except Exception as e:
                errors.append(e)
        if self._group is not None and self._snap_name is not None and self._cluster is not None:
            try:
                self._group.remove_snap(self._snap_name)
            except self._cluster.errors() as e:
                self._notice(f"the group snapshot {self._snap_name} stays until the next group backup: "
                             f"{ceph_error(e, 'cannot remove it')}")
        if self._ioctx is not None:
            self._ioctx.close()
        if self._cluster is not None:
            self._cluster.close()
        if errors:
            raise errors[0]
