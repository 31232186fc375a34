"""An RBD image through Ceph's own change tracking.

A backup takes an RBD snapshot (named by :mod:`snapshots`), reads that snapshot through librbd and, for an
incremental whose previous snapshot still vouches, asks librbd which extents changed between the two
(``diff_iterate``; where the image's fast-diff object map is valid, the map names the changed objects and
only those are asked for their exact extents). The CBT map the planner reads marks the blocks those extents touch;
extents the diff reports as gone (discarded or zeroed) and, for a full or a scan, everything the snapshot
does not allocate are read as zeros without asking the cluster. Once the backup is in the repository the
older snapshots are removed, so an image carries one cbtbackup snapshot between backups — two where a
backup was taken with ``--keep-base``: its snapshot (named ``…-base``) stays for differentials against it
until a newer ``--keep-base`` backup replaces it. A backup that fails removes the snapshot it took, and the
previous ones stay. In a group (:mod:`group`) the snapshot taken is only the anchor the next run diffs from,
and the image is read at its part of the group snapshot taken right after it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cbtbackup.engine.cbt import CbtInfo
from cbtbackup.engine.providers.base import CbtState, SnapshotSession
from cbtbackup.engine.rbd.cluster import CephOptions, Cluster, ceph_error
from cbtbackup.engine.rbd.names import RbdSpec, parse_rbd
from cbtbackup.engine.rbd.snapshots import ImageIdentity, SnapshotPlan, leftovers, ours, plan_snapshot
from cbtbackup.engine.zero_ranges import ZeroRangesImage, complement
from cbtbackup.errors import CbtError, NotFoundError, SnapshotFailedError
from cbtbackup.model.checkpoint import CbtCheckpoint

Notice = Callable[[str], None]
BLOCK = 64 << 10  # the tracking block of the CBT map the provider reports


class RbdSession(SnapshotSession):
    provider = "rbd"
    full_when_resized = True  # an incremental of a resized image reads it all as a full, saying so
    exact_within_objects = True  # with fast-diff: the changed objects' exact extents (False: whole objects)

    def __init__(self, provider: RbdProvider, in_group: bool = False) -> None:
        """``in_group``: take only the anchor snapshot; :class:`~cbtbackup.engine.rbd.group.RbdGroup` then
        takes the group snapshot and calls :meth:`read_group_snapshot`."""
        self.source = provider.source
        self.spec = provider.spec
        self._notice = provider.notice
        self._committed = False
        self._keep_base = provider.keep_base
        self._taken: str | None = None  # the snapshot of ours this run took: the next incremental's base
        self._reading = ""  # the snapshot read: the one taken, or the group snapshot of ``group_snap_id``
        self._group_snap_id: int | None = None
        self._head: Any = None
        self._snap: Any = None
        self._ioctx: Any = None
        self.bytes_read = 0  # from the cluster: what the incremental's read volume is measured by
        self._cluster = Cluster(provider.ceph)
        self._errors = self._cluster.errors()
        try:
            self._ioctx = self._cluster.ioctx(self.spec)
            self._anchor(provider.since, provider.newest)
            if not in_group:
                self._reading = str(self._taken)
                self._read_at(self._cluster.rbd.Image(self._ioctx, self.spec.image, snapshot=self._taken,
                                                      read_only=True))
        except self._errors as e:
            self.close()
            raise ceph_error(e, f"cannot snapshot {self.spec}") from None
        except BaseException:
            self.close()
            raise

    def _anchor(self, since: CbtCheckpoint | None, newest: CbtCheckpoint | None) -> None:
        """Take this run's snapshot of ours (the one the next incremental diffs from)."""
        rbd = self._cluster.rbd
        try:
            self._head = rbd.Image(self._ioctx, self.spec.image)
        except rbd.ImageNotFound:
            raise NotFoundError(f"{self.spec}: no such RBD image") from None
        identity = ImageIdentity(self._cluster.fsid, self._ioctx.get_pool_id(), self.spec.namespace,
                                 self._head.id())
        snapshots = ours([s["name"] for s in self._head.list_snaps()])
        for leftover in leftovers(snapshots, newest, identity):
            self._head.remove_snap(leftover.name)
            snapshots.remove(leftover)
        plan = plan_snapshot(snapshots, since, identity, str(self.spec), self._keep_base)
        if any(s.name == plan.new_name for s in snapshots):  # left by a run that was killed
            self._head.remove_snap(plan.new_name)
        self._head.create_snap(plan.new_name)
        self._taken = plan.new_name
        self.plan = plan

    def group(self) -> tuple[int, str] | None:
        """The (pool id, name) of the RBD group the image is in, if any."""
        try:
            info = self._head.group()
        except self._errors as e:
            raise ceph_error(e, f"cannot read the RBD group of {self.spec}") from None
        return (int(info["pool"]), str(info["name"])) if info["name"] else None

    def has_exclusive_lock(self) -> bool:
        try:
            return bool(self._head.features() & self._cluster.rbd.RBD_FEATURE_EXCLUSIVE_LOCK)
        except self._errors as e:
            raise ceph_error(e, f"cannot read the features of {self.spec}") from None

    def read_group_snapshot(self, group_snap: str) -> None:
        """Read the image at its part of the group snapshot ``group_snap``, taken after :meth:`_anchor`.

        librbd cannot diff *from* a group snapshot (Ceph 16: ImageNotFound) but can diff from an ordinary
        snapshot *to* one. So the anchor taken just before the group snapshot is what the next incremental
        diffs from, and this one diffs from the previous anchor: the writes between an anchor and its group
        snapshot are reported twice (read again next time), never missed."""
        try:
            ours_in_group = [s for s in self._head.list_snaps()
                             if s.get("namespace") == self._cluster.rbd.RBD_SNAP_NAMESPACE_TYPE_GROUP
                             and s.get("group", {}).get("snap_name") == group_snap]
            if not ours_in_group:
                raise SnapshotFailedError(f"{self.spec}: the group snapshot {group_snap} has no part on this "
                                          "image (was it added to the group just now?)")
            self._group_snap_id = int(ours_in_group[0]["id"])
            self._reading = f"of the group, {group_snap}"
            image = self._cluster.rbd.Image(self._ioctx, self.spec.image, read_only=True)
            try:
                image.set_snap_by_id(self._group_snap_id)
            except BaseException:
                image.close()
                raise
            self._read_at(image)
        except self._errors as e:
            raise ceph_error(e, f"cannot read {self.spec} at the group snapshot {group_snap}") from None

    def _read_at(self, snap: Any) -> None:
        """Read the snapshot ``snap`` (an open image): the changed extents since the plan's base, or all."""
        self._snap = snap
        plan = self.plan
        size = int(self._snap.size())
        whole_object = self._fast_diff_valid()
        cbt_map = bytearray(-(-size // BLOCK))
        zeros: list[tuple[int, int]] = []
        if plan.since is not None:
            for offset, length, exists in self._changed_extents(plan.since.name, size, whole_object):
                first, last = offset // BLOCK, -(-min(size, offset + length) // BLOCK)
                cbt_map[first:last] = bytes([plan.number]) * (last - first)
                if not exists:
                    zeros.append((offset, min(size, offset + length) - offset))
            zeros.sort()
        else:  # a full, or a new generation (the backup then scans): everything unallocated is zeros
            allocated: list[tuple[int, int]] = []
            self._snap.diff_iterate(0, size, None, lambda o, n, e: allocated.append((o, n)) if e else None,
                                    whole_object=whole_object)
            zeros = complement(sorted(allocated), size)
        self.image = ZeroRangesImage(size, zeros, self._read)
        self.cbt = CbtState(CbtInfo(size, BLOCK, len(cbt_map), plan.generation, plan.number), bytes(cbt_map),
                            plan.reset_reason)

    def _changed_extents(self, since: str, size: int, fast_diff: bool) -> list[tuple[int, int, bool]]:
        """librbd's diff since the snapshot ``since``: (offset, length, exists) per changed extent.

        Without a valid fast-diff map librbd asks every object of the image for its extents. With one, the
        object map names the changed objects at once but only as whole objects (4 MiB by default), and
        reading whole objects for scattered small writes multiplies the read volume (bench/rbd_incremental.py
        measured it); so the changed objects are found in the map and then asked for their exact extents
        — one request per changed object instead of one per object of the image."""
        extents: list[tuple[int, int, bool]] = []

        def collect(offset: int, length: int, exists: bool) -> None:
            extents.append((offset, length, exists))

        if not fast_diff:
            self._snap.diff_iterate(0, size, since, collect)
            return extents
        self._snap.diff_iterate(0, size, since, collect, whole_object=True)
        if not self.exact_within_objects:
            return extents
        objects, extents = extents, []
        for offset, length, exists in objects:
            if not exists:  # the whole object is gone (discarded): zeros, nothing to refine
                extents.append((offset, length, exists))
            else:
                self._snap.diff_iterate(offset, min(length, size - offset), since, collect)
        return extents

    def _fast_diff_valid(self) -> bool:
        rbd = self._cluster.rbd
        invalid = rbd.RBD_FLAG_FAST_DIFF_INVALID | rbd.RBD_FLAG_OBJECT_MAP_INVALID
        return bool(self._snap.features() & rbd.RBD_FEATURE_FAST_DIFF) and not self._snap.flags() & invalid

    def _read(self, offset: int, length: int) -> bytes:
        try:
            data: bytes = self._snap.read(offset, length)
        except self._errors as e:
            raise SnapshotFailedError(f"{self.spec}: the snapshot {self._reading} cannot be read: "
                                      f"{ceph_error(e, 'read')}") from None
        self.bytes_read += len(data)
        return data

    def check_intact(self) -> None:
        try:
            snapshots = list(self._head.list_snaps())
        except self._errors as e:
            raise ceph_error(e, f"cannot list the snapshots of {self.spec}") from None
        if self._taken not in {s["name"] for s in snapshots}:
            raise SnapshotFailedError(f"{self.spec}: the snapshot {self._taken} was removed while it was read")
        if self._group_snap_id is not None and self._group_snap_id not in {s["id"] for s in snapshots}:
            raise SnapshotFailedError(f"{self.spec}: the group snapshot was removed while it was read")

    def committed(self) -> None:
        self._committed = True

    def _remove_snapshots(self) -> None:
        """After a commit, every older snapshot of ours but a kept base (unless this backup is the new base);
        after a failure, the one this run took."""
        if self._head is None or self._taken is None:
            return
        try:
            snapshots = ours([s["name"] for s in self._head.list_snaps()])
        except self._errors:
            snapshots = []
        if self._committed:
            doomed = [s.name for s in snapshots if s.name != self._taken and (self._keep_base or not s.base)]
        else:
            doomed = [self._taken]
        for name in doomed:
            try:
                self._head.remove_snap(name)
            except self._errors as e:
                self._notice(f"the snapshot {self.spec}@{name} stays until the next backup: "
                             f"{ceph_error(e, 'cannot remove it')}")

    def close(self) -> None:
        if self._snap is not None:
            self._snap.close()
            self._snap = None
        try:
            self._remove_snapshots()
        except CbtError as e:
            self._notice(str(e))
        finally:
            if self._head is not None:
                self._head.close()
                self._head = None
            if self._ioctx is not None:
                self._ioctx.close()
                self._ioctx = None
            self._cluster.close()


class RbdProvider:
    """The image ``rbd:POOL[/NAMESPACE]/IMAGE`` on the cluster ``ceph`` names."""

    name = "rbd"

    def __init__(self, source: str, ceph: CephOptions | None = None, notice: Notice | None = None) -> None:
        self.spec: RbdSpec = parse_rbd(source)
        self.source = str(self.spec)
        self.ceph = ceph or CephOptions()
        self.notice: Notice = notice or (lambda _: None)
        self.since: CbtCheckpoint | None = None  # the chain's previous checkpoint, set before open_snapshot
        self.keep_base = False  # keep this backup's snapshot for later differentials (``--keep-base``)
        self.newest: CbtCheckpoint | None = None  # the chain's newest backup's checkpoint (to find leftovers)

    def open_snapshot(self) -> RbdSession:
        return RbdSession(self)


__all__ = ["BLOCK", "RbdProvider", "RbdSession", "SnapshotPlan"]
