"""Running an admin's hook: in its own process group, with the job's facts in its environment, killed (the
whole group, so a shell's children go too) when its timeout passes.

What a hook prints goes to the job's standard error, prefixed with the hook's name, so a journal shows it in
place; the last line it printed is kept for the error message when it fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping

from cbtbackup.jobs.job_file import HookCommand

KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL for a hook past its timeout


@dataclasses.dataclass(frozen=True)
class HookOutcome:
    name: str
    ok: bool
    reason: str = ""  # why it failed, in one line

    def line(self) -> str:
        return f"hook {self.name} failed: {self.reason}"


def _echo(stream: object, name: str, last: list[str]) -> None:
    for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
        text = raw.decode("utf-8", "replace").rstrip("\n")
        if text.strip():
            last[:] = [text.strip()]
        sys.stderr.write(f"cbtbackup: hook {name}: {text}\n")
        sys.stderr.flush()


def run_hook(name: str, command: HookCommand, facts: Mapping[str, str], timeout: float,
             label: str | None = None, cwd: str | None = None) -> HookOutcome:
    """Run one hook to its end or its timeout; never raises. ``label`` prefixes its output (default: name);
    ``cwd`` is where it runs (the job file's folder, as relative paths in the file mean)."""
    env = {**os.environ, **facts, "CBTBACKUP_HOOK": name}
    try:
        process = subprocess.Popen(command.argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)
    except OSError as e:
        return HookOutcome(name, False, f"cannot run {command.argv[0]}: {e.strerror or e}")
    last: list[str] = []
    reader = threading.Thread(target=_echo, args=(process.stdout, label or name, last), daemon=True)
    reader.start()
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        reader.join(timeout=KILL_GRACE)
        return HookOutcome(name, False, f"still running after {timeout:g} s: killed")
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM of the job: the hook goes with it
        _kill_group(process)
        raise
    reader.join(timeout=KILL_GRACE)
    if code != 0:
        said = f" ({last[0][:200]})" if last else ""
        how = f"killed by signal {-code}" if code < 0 else f"exited with {code}"
        return HookOutcome(name, False, f"{how}{said}")
    return HookOutcome(name, True)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=KILL_GRACE)
            return
        except subprocess.TimeoutExpired:
            continue
