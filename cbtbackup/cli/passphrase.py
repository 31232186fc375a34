"""Where a repository's passphrase comes from — never from a command-line argument, never printed.

A key file (``--key-file FILE`` or ``$CBTBACKUP_KEY_FILE``, ``repo/key_file.py``) comes first: it opens the
repository without a passphrase. Otherwise, in this order: ``--password-file FILE`` (its first line),
``--password-command CMD`` (the first line it prints), ``$CBTBACKUP_PASSWORD``, and a prompt when standard
input is a terminal. A new passphrase (for ``init``, ``key add``, ``key passwd``) comes from
``--new-password-file``, ``$CBTBACKUP_NEW_PASSWORD`` or a prompt asked twice; ``init`` takes it from the
ordinary sources, never from a key file.
"""

from __future__ import annotations

import contextvars
import dataclasses
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from cbtbackup.errors import UsageError
from cbtbackup.repo.key_file import read_key_file
from cbtbackup.repo.secret_sources import password_from_command, password_from_file

if TYPE_CHECKING:
    from cbtbackup.repo.repository import Secret


@dataclasses.dataclass(frozen=True)
class PasswordOptions:
    file: str | None = None
    command: str | None = None
    key_file: str | None = None


# Set by the options of the command that runs (see cli/app.py's repo_option); read when a repository asks.
CURRENT: contextvars.ContextVar[PasswordOptions | None] = contextvars.ContextVar("passwords", default=None)


def _prompt(text: str, confirm: bool) -> str:
    import getpass

    first = getpass.getpass(text)
    if confirm and getpass.getpass("Again: ") != first:
        raise UsageError("the passphrases do not match")
    return first


def read_passphrase(location: str, confirm: bool = False) -> str | None:
    """The passphrase for ``location`` from the sources above, or None if there is none."""
    options = CURRENT.get() or PasswordOptions()
    if options.file:
        return password_from_file(options.file)
    if options.command:
        return password_from_command(options.command)
    if (env := os.environ.get("CBTBACKUP_PASSWORD")) is not None:
        return env
    if sys.stdin.isatty():
        return _prompt(f"Passphrase for {location}: ", confirm)
    return None


def read_secret(location: str) -> Secret | None:
    """What opens ``location``: the key file if one is given, else the passphrase."""
    options = CURRENT.get() or PasswordOptions()
    if options.key_file:
        return read_key_file(options.key_file)
    return read_passphrase(location)


def passphrase_for(location: str) -> Callable[[], Secret | None]:
    """Asked only if the repository turns out to be encrypted."""
    return lambda: read_secret(location)


def read_new_passphrase(new_file: str | None) -> str:
    if new_file:
        return password_from_file(new_file)
    if (env := os.environ.get("CBTBACKUP_NEW_PASSWORD")) is not None:
        return env
    if sys.stdin.isatty():
        return _prompt("New passphrase: ", confirm=True)
    raise UsageError("no new passphrase: give --new-password-file, set CBTBACKUP_NEW_PASSWORD, or use a terminal")
