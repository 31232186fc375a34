"""Front ends run as a user runs them: ``cbtbackup serve`` and ``cbtbackup mount`` in processes of their own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

Started = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def foreground() -> Iterator[Started]:
    """Start ``cbtbackup ARGS...`` and wait until ``ready()`` holds; every process is stopped with SIGTERM."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: object, ready: Callable[[], bool], timeout: float = 30,
              cwd: Path | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-m", "cbtbackup", *map(str, args)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=cwd,
                                env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
        procs.append(proc)
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(f"cbtbackup {args[0]} ended: {proc.stderr.read() if proc.stderr else ''}")
            if time.monotonic() > deadline:
                raise AssertionError(f"cbtbackup {args[0]} did not get ready")
            time.sleep(0.05)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def stop(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


def need(tool: str, package: str) -> None:
    if subprocess.run(["which", tool], capture_output=True).returncode != 0:
        pytest.skip(f"{tool} is not on this machine (Debian package {package})")


def socket_ready(path: Path) -> Callable[[], bool]:
    return lambda: path.exists()


def mounted(path: Path) -> Callable[[], bool]:
    return lambda: os.path.ismount(path)
