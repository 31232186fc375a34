"""Starting, finding and stopping attach daemons from other processes (the CLI, the backup provider)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cbtbackup.engine.attach.control import ControlClient, RemoteError
from cbtbackup.engine.attach.daemon import AttachOptions
from cbtbackup.engine.attach.record import AttachRecord, live_record, source_of_mountdir
from cbtbackup.engine.volume import default_state_dir
from cbtbackup.errors import CbtError, NotFoundError

READY = "READY "
LOG_NAME = "attach.log"


def start_daemon(options: AttachOptions, timeout: float = 30) -> AttachRecord:
    """Run the daemon in the background (a new session) and wait until it serves, or say why it failed."""
    cmd = [sys.executable, "-m", "cbtbackup", "attach", options.image, options.mountdir, "--foreground",
           "--ready-line"]
    if options.loop:
        cmd.append("--loop")
    if options.state_dir:
        cmd += ["--state-dir", options.state_dir]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        if line.startswith(READY):
            return AttachRecord(**json.loads(line[len(READY):]))
        if time.monotonic() > deadline:
            break
    code = proc.wait()
    message = proc.stderr.read().strip().splitlines()
    text = message[-1].removeprefix("cbtbackup: error: ") if message else f"the attach daemon exited ({code})"
    raise RemoteError(text, code or 1)


def announce_ready(record: AttachRecord, log_path: Path) -> None:
    """In the daemon: tell the starting process we serve, then stop writing to its pipes."""
    sys.stdout.write(READY + json.dumps(record.__dict__) + "\n")
    sys.stdout.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def detach(mountdir: str, timeout: float = 60) -> AttachRecord:
    """Ask the daemon serving ``mountdir`` to tear down, and wait until it is gone."""
    source = source_of_mountdir(Path(mountdir))
    record = live_record(source.state_dir) if source else None
    if source is None or record is None:
        raise NotFoundError(f"nothing is attached at {mountdir}")
    client = ControlClient(source.state_dir)
    try:
        client.call("detach")
    finally:
        client.close()
    deadline = time.monotonic() + timeout
    while pid_alive(record.pid):
        if time.monotonic() > deadline:
            raise CbtError(f"the attach daemon (pid {record.pid}) did not stop in {timeout:.0f} s")
        time.sleep(0.05)
    return record


def status(image: str, state_dir: str | None = None) -> dict[str, Any]:
    """Whether ``image`` is attached (where, which loop device) and its CBT state."""
    sd = Path(state_dir) if state_dir else default_state_dir(Path(image))
    record = live_record(sd)
    if record is None:
        return {"image": str(Path(image).absolute()), "attached": False}
    client = ControlClient(sd)
    try:
        answer = client.call("status")
    finally:
        client.close()
    answer.pop("ok", None)
    return {"attached": True, **answer}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
