"""Turn a repository location (a directory path, later ``s3://``) into a :class:`Store`."""

from __future__ import annotations

from pathlib import Path

from cbtbackup.errors import NotFoundError, UsageError
from cbtbackup.repo.local_store import LocalStore
from cbtbackup.repo.repository import Repository
from cbtbackup.repo.store import Store


def open_store(location: str, *, create: bool = False) -> Store:
    """The store at ``location``; ``create`` makes a missing local directory (for ``init``)."""
    if not location:
        raise UsageError("no repository given: use -r/--repo or set CBTBACKUP_REPO")
    if "://" in location:
        raise UsageError(f"unsupported repository URL {location!r}")
    path = Path(location)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{location} is not a directory")
    if not path.exists():
        if not create:
            raise NotFoundError(f"no repository at {location}")
        path.mkdir(parents=True, mode=0o700)
    return LocalStore(path)


def open_repository(location: str) -> Repository:
    """The repository at ``location``; a clear error if there is none or it is not ours."""
    return Repository.open(open_store(location), location)
