"""Where an unattended run finds what opens an encrypted repository: a password file or a command's output.

Shared by the command line (``--password-file``, ``--password-command``) and job files, so both read the same
way: the first line only, a command bounded by a timeout, and never the secret in an error message.
"""

from __future__ import annotations

import shlex
import subprocess

from cbtbackup.errors import os_error
from cbtbackup.repo.keys import UnlockError

COMMAND_TIMEOUT = 120.0  # a password command that asks a vault may wait on the network, not forever


def first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


def password_from_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return first_line(f.read())
    except OSError as e:
        raise os_error(e, f"cannot read the password file {path}") from None


def password_from_command(command: str, what: str = "--password-command") -> str:
    try:
        done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        raise UnlockError(f"{what} could not run: {e}") from None
    if done.returncode != 0:
        raise UnlockError(f"{what} exited with {done.returncode}")
    return first_line(done.stdout)
