"""Opening the repository a command names, asking for its passphrase only if it is encrypted, through the
store options (storage class, rate limits) the command line gave."""

from __future__ import annotations

import contextvars
import dataclasses

import click

from cbtbackup.cli.passphrase import passphrase_for
from cbtbackup.cli.progress_bar import print_notice
from cbtbackup.repo.location import StoreOptions, open_repository, open_store
from cbtbackup.repo.repository import Repository
from cbtbackup.repo.store import Store

# Set by ``repo_option`` for the command being run: everything about the store but its endpoint.
TUNING: contextvars.ContextVar[StoreOptions | None] = contextvars.ContextVar("store_tuning", default=None)


def store_options(endpoint_url: str | None) -> StoreOptions:
    return dataclasses.replace(TUNING.get() or StoreOptions(), endpoint_url=endpoint_url)


def open_repo(repo: str, endpoint_url: str | None, backs_up: bool = False) -> Repository:
    """The repository, opened for the command that runs. Only commands that back up (``backs_up``) may have
    it opened with a write-only key: every other one is refused before it starts (exit 13)."""
    opened = open_repository(repo, store_options(endpoint_url), passphrase_for(repo))
    for note in opened.notes:  # a damaged config opened with its copy: said on every command until repaired
        print_notice(note)
    if not backs_up:
        context = click.get_current_context(silent=True)
        opened.require_full_key(f"'{context.command_path}'" if context is not None else "this command")
    return opened


def open_new_store(repo: str, endpoint_url: str | None) -> Store:
    """The store for ``init``: a missing local directory is made."""
    return open_store(repo, store_options(endpoint_url), create=True)
