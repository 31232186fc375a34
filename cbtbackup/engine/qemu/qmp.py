"""A QMP connection with the project's errors: QEMU's own client (the ``qemu.qmp`` package), synchronous."""

from __future__ import annotations

import contextlib
from typing import Any

from qemu.qmp import ExecuteError
from qemu.qmp.legacy import QEMUMonitorProtocol

from cbtbackup.errors import NotFoundError, StorageError, UsageError


class QemuError(StorageError):
    """QEMU refused a command."""


class Qmp:
    def __init__(self, path: str) -> None:
        self.path = path
        self._monitor = QEMUMonitorProtocol(path)
        try:
            self._monitor.connect(negotiate=True)
        except OSError as e:
            raise NotFoundError(f"QMP socket {path}: {getattr(e, 'strerror', None) or e}") from None
        except Exception as e:  # the library wraps connection failures in its own errors
            cause = e.__cause__ if isinstance(e.__cause__, OSError) else None
            reason = cause.strerror if cause is not None and cause.strerror else str(e) or type(e).__name__
            raise NotFoundError(f"QMP socket {path}: {reason}") from None

    def run(self, command: str, **arguments: Any) -> Any:
        try:
            return self._monitor.cmd(command, **arguments)
        except ExecuteError as e:
            raise QemuError(f"QEMU refused {command}: {e.error.error.desc}") from None
        except (OSError, EOFError) as e:
            raise QemuError(f"QEMU went away during {command}: {e}") from None

    def transaction(self, actions: list[dict[str, Any]]) -> None:
        """Several actions at one instant, all or none."""
        self.run("transaction", actions=actions)

    def node(self, name: str) -> dict[str, Any]:
        """The block node ``name`` (a node name, or the device name of a drive), as query-named-block-nodes
        describes it."""
        nodes: list[dict[str, Any]] = self.run("query-named-block-nodes", flat=True)
        for node in nodes:
            if node.get("node-name") == name:
                return node
        for device in self.run("query-block"):
            if device.get("device") == name or device.get("qdev") == name:
                inserted = device.get("inserted")
                if inserted is not None:
                    return next(n for n in nodes if n.get("node-name") == inserted.get("node-name"))
        known = sorted(n["node-name"] for n in nodes if not n["node-name"].startswith("#"))
        raise UsageError(f"QEMU at {self.path} has no block node or drive {name!r} (nodes: {', '.join(known)})")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._monitor.close()
