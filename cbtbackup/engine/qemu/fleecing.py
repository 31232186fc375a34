"""A point-in-time NBD export of a QEMU block node while it stays writable (QEMU's image-fleecing recipe).

One QMP transaction, at one instant — for one node, or for every disk of a consistency group: the backup's
new persistent bitmap starts recording, the bitmaps the backup will read stop recording (an NBD export may
only publish frozen bitmaps), and a ``blockdev-backup`` job with ``sync=none`` starts copying the old data of
every block the guest overwrites into a temporary
qcow2 overlay whose backing is the disk. The overlay therefore reads as the disk did at that instant; it is
exported read-only over a private Unix socket together with the frozen bitmaps. Closing tears all of it
down (export, job, overlay; then the NBD server) on every path; :func:`remove_leftovers` does the same for what a
killed run left in a running VM.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path
from typing import Any

from cbtbackup.engine.qemu.bitmaps import GRANULARITY
from cbtbackup.engine.qemu.qmp import QemuError, Qmp

LEFTOVER_WAIT = 10.0


def names(node: str) -> tuple[str, str, str]:
    """(overlay node, job, export) names of cbtbackup's fleecing of ``node``."""
    return f"cbtbackup-fleece-{node}", f"cbtbackup-job-{node}", f"cbtbackup-export-{node}"


class PointInTimeExport:
    """One node's share of a point-in-time export: its bitmap actions, overlay, job and NBD export.

    :func:`open_exports` takes one or several at one instant (one transaction) and serves them on one NBD
    server (QEMU runs one at a time)."""

    def __init__(self, qmp: Qmp, node: str, size: int, workdir: Path, new_bitmap: str, frozen: list[str],
                 fleece: bool = True, also: list[dict[str, Any]] | None = None) -> None:
        """``fleece`` False: nothing else can write the node (a storage daemon cbtbackup holds the image lock
        of), so the node itself is exported and no overlay is needed. ``also``: more bitmap actions for the
        same instant (a base's frozen copy, a new base)."""
        self.qmp, self.node, self.size = qmp, node, size
        self.overlay_node, self.job, self.export = names(node)
        self._overlay = workdir / f"fleece-{node}.qcow2"
        self._new_bitmap, self._frozen, self._fleece, self._also = new_bitmap, frozen, fleece, also or []
        self.socket: Path | None = None
        self._steps: list[tuple[str, dict[str, Any]]] = []  # undo, in reverse

    def prepare(self) -> list[dict[str, Any]]:
        """Make the overlay; the transaction actions that start this node's point in time."""
        node = self.node
        actions: list[dict[str, Any]] = [{"type": "block-dirty-bitmap-add", "data": {
            "node": node, "name": self._new_bitmap, "persistent": True, "granularity": GRANULARITY}}]
        actions += self._also
        actions += [{"type": "block-dirty-bitmap-disable", "data": {"node": node, "name": name}}
                    for name in self._frozen if not any(a["data"].get("name") == name for a in self._also)]
        if self._fleece:
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(self._overlay), str(self.size)],
                           check=True, capture_output=True)
            self.qmp.run("blockdev-add", driver="qcow2", **{"node-name": self.overlay_node, "backing": node,
                                                           "file": {"driver": "file", "filename": str(self._overlay)}})
            self._steps.append(("blockdev-del", {"node-name": self.overlay_node}))
            actions.append({"type": "blockdev-backup", "data": {
                "device": node, "target": self.overlay_node, "sync": "none", "job-id": self.job}})
        return actions

    def started(self) -> None:
        if self._fleece:
            self._steps.append(("block-job-cancel", {"device": self.job, "force": True}))

    def publish(self, server: NbdServer) -> None:
        self.qmp.run("block-export-add", type="nbd", id=self.export, **{
            "node-name": self.overlay_node if self._fleece else self.node, "name": self.export, "writable": False,
            "bitmaps": self._frozen})
        self._steps.append(("block-export-del", {"id": self.export, "mode": "hard"}))
        self.socket = server.socket

    def close(self) -> None:
        """Undo everything, last step first; a step that fails does not stop the others."""
        while self._steps:
            command, arguments = self._steps.pop()
            with contextlib.suppress(QemuError):
                self.qmp.run(command, **arguments)
                if command == "block-job-cancel":
                    _wait_for_job_end(self.qmp, self.job)
        self._overlay.unlink(missing_ok=True)


class NbdServer:
    """QEMU's one NBD server, on a private Unix socket."""

    def __init__(self, qmp: Qmp, socket: Path) -> None:
        self.qmp, self.socket = qmp, socket
        address = {"type": "unix", "data": {"path": str(socket)}}  # SocketAddressLegacy
        try:
            qmp.run("nbd-server-start", addr=address)
        except QemuError as e:
            if "already" not in str(e):
                raise
            raise QemuError(f"{e}: QEMU runs one NBD server at a time — is another backup of this VM running, "
                            "or does the VM export its disks over NBD?") from None

    def stop(self) -> None:
        with contextlib.suppress(QemuError):
            self.qmp.run("nbd-server-stop")


def open_exports(qmp: Qmp, exports: list[PointInTimeExport], socket: Path) -> NbdServer:
    """Start every export's point in time in ONE transaction (the same instant for all nodes), then serve
    them all on one NBD server; on failure everything is undone."""
    server: NbdServer | None = None
    try:
        actions = [action for export in exports for action in export.prepare()]
        qmp.transaction(actions)
        for export in exports:
            export.started()
        server = NbdServer(qmp, socket)
        for export in exports:
            export.publish(server)
        return server
    except BaseException:
        for export in exports:
            export.close()
        if server is not None:
            server.stop()
        raise


def _wait_for_job_end(qmp: Qmp, job: str) -> None:
    deadline = time.monotonic() + LEFTOVER_WAIT
    while any(j.get("device") == job for j in qmp.run("query-block-jobs")):
        if time.monotonic() > deadline:
            raise QemuError(f"the block job {job} did not end")
        time.sleep(0.02)


def remove_leftovers(qmp: Qmp, node: str) -> list[str]:
    """Tear down the fleecing of ``node`` that a killed run left behind; what was removed, for one line."""
    overlay_node, job, export = names(node)
    removed = []
    if any(e.get("id") == export for e in qmp.run("query-block-exports")):
        qmp.run("block-export-del", id=export, mode="hard")
        removed.append(f"export {export}")
        with contextlib.suppress(QemuError):  # the server our export was on, if it serves nothing else now
            if not qmp.run("query-block-exports"):
                qmp.run("nbd-server-stop")
    if any(j.get("device") == job for j in qmp.run("query-block-jobs")):
        qmp.run("block-job-cancel", device=job, force=True)
        _wait_for_job_end(qmp, job)
        removed.append(f"job {job}")
    if any(n.get("node-name") == overlay_node for n in qmp.run("query-named-block-nodes", flat=True)):
        deadline = time.monotonic() + LEFTOVER_WAIT
        while True:  # the export's removal may take a moment to release the node
            try:
                qmp.run("blockdev-del", **{"node-name": overlay_node})
                break
            except QemuError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        removed.append(f"node {overlay_node}")
    return removed
