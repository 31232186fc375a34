"""Opening the repository a command names, asking for its passphrase only if it is encrypted."""

from __future__ import annotations

from cbtbackup.cli.passphrase import passphrase_for
from cbtbackup.repo.location import StoreOptions, open_repository
from cbtbackup.repo.repository import Repository


def open_repo(repo: str, endpoint_url: str | None) -> Repository:
    return open_repository(repo, StoreOptions(endpoint_url), passphrase_for(repo))
