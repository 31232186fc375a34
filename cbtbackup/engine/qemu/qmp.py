"""A QMP connection with the project's errors: QEMU's own client (the ``qemu.qmp`` package), synchronous."""

from __future__ import annotations

import contextlib
import select
import socket
from typing import Any

from qemu.qmp import ExecuteError
from qemu.qmp.legacy import QEMUMonitorProtocol

from cbtbackup.errors import BusyError, NotFoundError, StorageError, UsageError


class QemuError(StorageError):
    """QEMU refused a command."""


GREETING_TIMEOUT = 10.0


class Qmp:
    def __init__(self, path: str) -> None:
        self.path = path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            # A QMP monitor serves one client at a time: a second one hears nothing (or is hung up on). Wait
            # for the greeting here, with a limit, rather than in the library, which would wait forever.
            ready = select.select([sock], [], [], GREETING_TIMEOUT)[0]
            if not ready or not sock.recv(1, socket.MSG_PEEK):
                raise BusyError(f"QMP socket {path}: QEMU sent no greeting; another client (libvirt?) holds this "
                                "monitor: give the VM a QMP socket of its own for cbtbackup (docs/qemu.md)")
        except OSError as e:
            sock.close()
            raise NotFoundError(f"QMP socket {path}: {e.strerror or e}") from None
        except BaseException:
            sock.close()
            raise
        self._monitor = QEMUMonitorProtocol(sock)
        try:
            self._monitor.connect(negotiate=True)
        except Exception as e:  # the library wraps failures in its own errors
            sock.close()
            raise StorageError(f"QMP socket {path}: {e or type(e).__name__}") from None

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
