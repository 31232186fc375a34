"""The control socket of an attached volume: one JSON object per line, each way.

The daemon listens on ``<state dir>/control.sock`` (mode 0600). A client sends ``{"op": ...}`` and reads
one answer: ``{"ok": true, ...}`` or ``{"ok": false, "error": "...", "exit_code": N}``. A snapshot a
connection asked for lives until it is released or the connection closes, so a backup that dies cannot
leave one behind.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cbtbackup.errors import CbtError, NotFoundError, StorageError

SOCKET_NAME = "control.sock"
Handler = Callable[[dict[str, Any], "Connection"], dict[str, Any]]


class RemoteError(CbtError):
    """An error the daemon reported, with its exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Connection:
    """One end of a control connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._reader = sock.makefile("rb")
        self.snapshots: list[str] = []  # owned by this connection (daemon side)
        self.holds: list[str] = []  # write holds this connection asked for (daemon side): resumed when it closes

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def receive(self) -> dict[str, Any] | None:
        line = self._reader.readline()
        if not line:
            return None
        message: dict[str, Any] = json.loads(line)
        return message

    def close(self) -> None:
        self._reader.close()
        self.sock.close()


class ControlClient:
    """Talks to the daemon of an attached volume."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / SOCKET_NAME
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise NotFoundError(f"no attach daemon answers at {self.path}") from None
        self._conn = Connection(sock)

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        try:
            self._conn.send({"op": op, **fields})
            answer = self._conn.receive()
        except OSError as e:
            raise StorageError(f"the attach daemon went away: {e}") from None
        if answer is None:
            raise StorageError("the attach daemon closed the connection")
        if not answer.get("ok"):
            raise RemoteError(str(answer.get("error")), int(answer.get("exit_code", 1)))
        return answer

    def close(self) -> None:
        self._conn.close()


def is_alive(state_dir: Path) -> bool:
    try:
        client = ControlClient(state_dir)
    except NotFoundError:
        return False
    client.close()
    return True


def serve_connection(conn: Connection, handle: Handler, on_close: Callable[[Connection], None]) -> None:
    """Answer requests on one connection until it closes (run in a thread per connection)."""
    try:
        while (request := conn.receive()) is not None:
            try:
                answer = {"ok": True, **handle(request, conn)}
            except CbtError as e:
                answer = {"ok": False, "error": str(e), "exit_code": e.exit_code}
            except Exception as e:  # keep the daemon alive; report the bug to the client
                answer = {"ok": False, "error": f"internal error: {type(e).__name__}: {e}", "exit_code": 70}
            conn.send(answer)
    except (OSError, ValueError):
        pass
    finally:
        on_close(conn)
        conn.close()


def listen(state_dir: Path) -> socket.socket:
    path = state_dir / SOCKET_NAME
    path.unlink(missing_ok=True)  # a socket left by a killed daemon; we hold the volume lock
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(16)
    return sock
