"""VM disks through QEMU: a point-in-time NBD export of a qcow2 image and the changes its dirty bitmaps saw.

Two ways in, one flow: an image no VM uses is opened by a ``qemu-storage-daemon`` cbtbackup starts; a
running VM's disk is reached through the QMP socket the user names (``--qmp``, ``--device``). Either way:
tear down what a killed run left, decide from cbtbackup's bitmaps whether the writes since the previous
backup are known (:mod:`bitmaps`), start the point-in-time export with the new bitmap (:mod:`fleecing`),
read the CBT map from the frozen bitmaps and the zero ranges from ``base:allocation`` over NBD, and after
the backup is committed remove the bitmaps it no longer needs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cbtbackup.engine.cbt import CbtInfo
from cbtbackup.engine.providers.base import CbtState, SnapshotSession
from cbtbackup.engine.qemu import bitmaps, fleecing
from cbtbackup.engine.qemu.nbd_client import NbdClient, dirty_bitmap_context
from cbtbackup.engine.qemu.qmp import Qmp
from cbtbackup.engine.qemu.storage_daemon import NODE, StorageDaemon
from cbtbackup.engine.zero_ranges import ZeroRangesImage
from cbtbackup.errors import CbtError, UsageError
from cbtbackup.model.checkpoint import CbtCheckpoint

Notice = Callable[[str], None]
DIRTY = 1  # qemu:dirty-bitmap extent flag


class NbdImage(ZeroRangesImage):
    """The export as the backup reads it: zero ranges from ``base:allocation`` come from memory, the rest
    over NBD."""

    def __init__(self, client: NbdClient) -> None:
        self.client = client
        super().__init__(client.size, client.zero_extents(), client.read)


class QemuSession(SnapshotSession):
    provider = "qemu"

    def __init__(self, provider: QemuProvider, shared: Qmp | None = None) -> None:
        """``shared``: a member of a group (:class:`QemuGroup`), whose QMP connection, one transaction and
        NBD server the group owns; the group calls :meth:`read_export` once the exports are up."""
        self.source = provider.source
        self._notice = provider.notice
        self._committed = False
        self._copy: str | None = None  # the frozen copy of a base this backup reads (a differential)
        self.new_base: str | None = None  # the base this backup adds (``--keep-base``)
        self._workdir = Path(tempfile.mkdtemp(prefix="cbtbackup-qemu-", dir=provider.work_root))
        self._daemon: StorageDaemon | None = None
        self._export: fleecing.PointInTimeExport | None = None
        self._server: fleecing.NbdServer | None = None  # ours alone; a group's belongs to the group
        self._client: NbdClient | None = None
        self._shared = shared is not None
        try:
            if shared is not None:
                self.qmp = shared
                self.node = self._resolve_node(provider)
            elif provider.qmp_path is None:
                self._daemon = StorageDaemon(Path(provider.source), self._workdir)
                self.qmp, self.node = self._daemon.qmp, NODE
            else:
                self.qmp = Qmp(provider.qmp_path)
                self.node = self._resolve_node(provider)
            self.export = self._prepare(provider)
            if shared is None:
                self._server = fleecing.open_exports(self.qmp, [self.export], self._workdir / "nbd.sock")
                self._export = self.export
                self.read_export()
        except BaseException:
            self.close()
            raise

    def _resolve_node(self, provider: QemuProvider) -> str:
        assert provider.device is not None
        node = self.qmp.node(provider.device)
        files = {os.path.realpath(f) for f in _filenames(node)}
        if os.path.realpath(provider.source) not in files:
            raise UsageError(f"QEMU's {provider.device} is {', '.join(sorted(files)) or 'not a file'}, not "
                             f"{provider.source}")
        name: str = node["node-name"]
        return name

    def _prepare(self, provider: QemuProvider) -> fleecing.PointInTimeExport:
        """Tear down leftovers, decide which bitmaps vouch for the writes since, and describe the export."""
        removed = fleecing.remove_leftovers(self.qmp, self.node)
        if removed:
            provider.notice(f"removed what a killed backup left in QEMU: {', '.join(removed)}")
        node = self.qmp.node(self.node)
        size = int(node["image"]["virtual-size"])
        self._drop_leftovers(node, provider.newest)
        node = self.qmp.node(self.node)
        plan = bitmaps.plan_chain(bitmaps.ours(node), provider.since, self.node, bitmaps.bases(node))
        self.new_bitmap = bitmaps.bitmap_name(plan.generation, plan.number)
        frozen = [b.name for b in plan.since]
        also: list[dict[str, Any]] = []
        if plan.base is not None:  # the base keeps recording; the export reads a copy frozen at this instant
            self._copy = bitmaps.copy_name(plan.generation, plan.number)
            frozen = [self._copy]
            also += [{"type": "block-dirty-bitmap-add", "data": {
                         "node": self.node, "name": self._copy, "persistent": False, "disabled": True,
                         "granularity": bitmaps.GRANULARITY}},
                     {"type": "block-dirty-bitmap-merge", "data": {
                         "node": self.node, "target": self._copy, "bitmaps": [plan.base.name]}}]
        if provider.keep_base:
            self.new_base = bitmaps.base_name(plan.generation, plan.number)
            also.append({"type": "block-dirty-bitmap-add", "data": {
                "node": self.node, "name": self.new_base, "persistent": True, "granularity": bitmaps.GRANULARITY}})
        self._plan, self._frozen = plan, frozen
        return fleecing.PointInTimeExport(self.qmp, self.node, size, self._workdir, self.new_bitmap, frozen,
                                          fleece=self._daemon is None, also=also)

    def read_export(self) -> None:
        """Connect to the export once it is published; read the CBT map from its frozen bitmaps."""
        self._export = self.export
        assert self.export.socket is not None
        plan, frozen, size = self._plan, self._frozen, self.export.size
        self._client = NbdClient(str(self.export.socket), self.export.export, tuple(frozen))
        self.image = NbdImage(self._client)
        block = bitmaps.GRANULARITY
        count = -(-size // block)
        cbt_map = bytearray(count)
        for name in frozen:
            for extent in self._client.block_status(dirty_bitmap_context(name)):
                if extent.flags & DIRTY:
                    first, last = extent.offset // block, -(-(extent.offset + extent.length) // block)
                    cbt_map[first:last] = bytes([plan.number]) * (last - first)
        self.cbt = CbtState(CbtInfo(size, block, count, plan.generation, plan.number), bytes(cbt_map),
                            plan.reset_reason)

    @property
    def nbd_bytes_read(self) -> int:
        return self._client.bytes_read if self._client is not None else 0

    def committed(self) -> None:
        """The backup that recorded the new bitmap is in the repository: the older ones are not needed (they
        are removed once the export that publishes them is gone)."""
        self._committed = True

    def _drop_leftovers(self, node: dict[str, Any], newest: CbtCheckpoint | None) -> None:
        """A killed run's frozen copies, and bases it added past the chain's newest backup (no backup is
        theirs): removed before planning, so they are neither trusted nor kept."""
        doomed = bitmaps.copies(node)
        if newest is not None:
            doomed += [b.name for b in bitmaps.bases(node)
                       if b.generation == newest.generation_id and b.number > newest.changes_number]
        if doomed:
            self.qmp.transaction([{"type": "block-dirty-bitmap-remove", "data": {"node": self.node, "name": name}}
                                  for name in doomed])

    def _remove_stale_bitmaps(self) -> None:
        """After a commit: the chain's older bitmaps and, when this backup added a base, the older bases;
        after a failure: the base this run added. The frozen copy goes either way."""
        try:
            node = self.qmp.node(self.node)
            stale = [self._copy] if self._copy else []
            if self._committed:
                stale += [b.name for b in bitmaps.ours(node) if b.name != self.new_bitmap]
                if self.new_base is not None:
                    stale += [b.name for b in bitmaps.bases(node) if b.name != self.new_base]
            elif self.new_base is not None:
                stale += [b.name for b in bitmaps.bases(node) if b.name == self.new_base]
            if stale:
                self.qmp.transaction([{"type": "block-dirty-bitmap-remove",
                                       "data": {"node": self.node, "name": name}} for name in stale])
        except CbtError as e:  # the backup is in; the next one removes them
            self._notice(f"older dirty bitmaps stay on {self.node} until the next backup: {e}")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._export is not None:
            self._export.close()
            self._export = None
        if self._server is not None:
            self._server.stop()
            self._server = None
        if hasattr(self, "qmp") and (self._committed or self._copy or self.new_base):
            self._remove_stale_bitmaps()
        if self._daemon is not None:
            self._daemon.stop()
            self._daemon = None
        elif hasattr(self, "qmp") and not self._shared:
            self.qmp.close()
        shutil.rmtree(self._workdir, ignore_errors=True)


class QemuGroup:
    """Several disks at one instant: of one running VM, in one QMP transaction; or images no VM uses, each
    opened (and locked against any writer) by its own storage daemon before any is read."""

    def __init__(self, providers: list[QemuProvider]) -> None:
        paths = {p.qmp_path for p in providers}
        if len(paths) > 1:
            raise UsageError("the disks of one group must all be offline images, or all disks of one VM "
                             "(one --qmp socket)")
        self.sessions: list[SnapshotSession] = []
        self._qmp: Qmp | None = None
        self._server: fleecing.NbdServer | None = None
        try:
            qmp_path = providers[0].qmp_path
            if qmp_path is None:  # every image locked by its daemon until the group closes: nothing writes
                for p in providers:
                    self.sessions.append(QemuSession(p))
                return
            self._qmp = Qmp(qmp_path)
            members = []
            for p in providers:
                members.append(QemuSession(p, shared=self._qmp))
                self.sessions.append(members[-1])
            workdir = Path(members[0]._workdir)
            self._server = fleecing.open_exports(self._qmp, [m.export for m in members], workdir / "nbd.sock")
            for member in members:
                member.read_export()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        try:
            for session in self.sessions:
                session.close()
        finally:
            if self._server is not None:
                self._server.stop()
            if self._qmp is not None:
                self._qmp.close()


def _filenames(node: dict[str, Any]) -> list[str]:
    """The file names a node's image chain names (the top image's first)."""
    names = []
    image = node.get("image")
    while image:
        if "filename" in image:
            names.append(image["filename"])
        image = image.get("backing-image")
    if "file" in node:
        names.append(node["file"])
    return names


class QemuProvider:
    """A qcow2 image: offline (``qmp_path`` None) or the disk ``device`` of the VM at ``qmp_path``."""

    name = "qemu"

    def __init__(self, source: str, qmp_path: str | None = None, device: str | None = None,
                 work_root: str | None = None, notice: Notice | None = None) -> None:
        if (qmp_path is None) != (device is None):
            raise UsageError("--qmp and --device go together: the VM's QMP socket and its disk's node name")
        self.source = str(Path(source).absolute())
        self.qmp_path = qmp_path
        self.device = device
        self.work_root = work_root or os.environ.get("CBTBACKUP_QEMU_WORKDIR") or "/var/tmp"
        self.notice: Notice = notice or (lambda _: None)
        self.since: CbtCheckpoint | None = None  # the chain's previous checkpoint, set before open_snapshot
        self.keep_base = False  # add a base bitmap for later differentials (``--keep-base``)
        self.newest: CbtCheckpoint | None = None  # the chain's newest backup's checkpoint (to find leftovers)

    def open_snapshot(self) -> QemuSession:
        return QemuSession(self)


__all__ = ["NbdImage", "QemuGroup", "QemuProvider", "QemuSession"]
