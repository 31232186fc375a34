"""A backup killed in the middle of its read: the CLI in a forked copy of the test process, slowed down."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Protocol

from cbtbackup.cli import main


class Reader(Protocol):
    def read(self, offset: int, length: int) -> bytes: ...


def backup_in_a_slow_child(args: list[str], reader: type[Reader], reading: Path) -> int:
    """Run ``cbtbackup ARGS`` in a fork (no new interpreter: one costs 15-25 s in the kernel VM) whose
    ``reader.read`` creates ``reading`` and then sleeps before each read, so that it can be killed mid-read.
    Returns the child's pid."""
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            original = reader.read

            def slow_read(self: Reader, offset: int, length: int) -> bytes:
                reading.touch()
                time.sleep(0.5)
                return original(self, offset, length)

            reader.read = slow_read  # type: ignore[method-assign]
            code = main(args)
        finally:
            os._exit(code)
    return pid


def wait_for(path: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, "the backup never started reading"
        time.sleep(0.05)
