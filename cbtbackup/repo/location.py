"""Turn a repository location — a directory path or ``s3://BUCKET/PREFIX`` — into a store and a repository."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from cbtbackup.errors import NotFoundError, UsageError, os_error
from cbtbackup.repo.local_store import LocalStore
from cbtbackup.repo.rate_limited_store import RateLimitedStore
from cbtbackup.repo.repository import Passphrase, Repository
from cbtbackup.repo.retrying_store import RetryingStore
from cbtbackup.repo.s3_store import S3Options, S3Store
from cbtbackup.repo.store import Store


@dataclasses.dataclass(frozen=True)
class StoreOptions:
    """How to reach a repository: the endpoint and storage class are S3's; the rate limits (bytes per
    second) hold for any store."""

    endpoint_url: str | None = None
    storage_class: str | None = None
    allow_archive_class: bool = False
    limit_upload: float | None = None
    limit_download: float | None = None
    as_of: float | None = None  # S3: read a versioned bucket as it was then (read-only)
    s3_timeout: float | None = None  # S3: seconds to wait for an answer, per try (None: S3Options' default)


def _limited(store: Store, options: StoreOptions) -> Store:
    if options.limit_upload or options.limit_download:
        return RateLimitedStore(store, options.limit_upload, options.limit_download)
    return store


def open_store(location: str, options: StoreOptions | None = None, *, create: bool = False) -> Store:
    """The store at ``location``; ``create`` makes a missing local directory (for ``init``)."""
    options = options or StoreOptions()
    if not location:
        raise UsageError("no repository given: use -r/--repo or set CBTBACKUP_REPO")
    if location.startswith("s3://"):
        s3_options = S3Options(endpoint_url=options.endpoint_url, storage_class=options.storage_class,
                               allow_archive_class=options.allow_archive_class, as_of=options.as_of)
        if options.s3_timeout:
            s3_options = dataclasses.replace(s3_options, read_timeout=options.s3_timeout,
                                             connect_timeout=min(s3_options.connect_timeout, options.s3_timeout))
        s3 = S3Store(location, s3_options)
        return _limited(RetryingStore(s3), options)
    if options.storage_class:
        raise UsageError("--storage-class is for S3 repositories only")
    if options.as_of is not None:
        raise UsageError("--as-of reads an S3 bucket's object versions: it is for S3 repositories only")
    if "://" in location:
        raise UsageError(f"unsupported repository URL {location!r} (a directory or s3://BUCKET/PREFIX)")
    # Absolute at once: a mount or an NBD server works from another directory than the one the user typed
    # the relative path in.
    path = Path(os.path.abspath(location))
    if path.exists() and not path.is_dir():
        raise UsageError(f"{location} is not a directory")
    made = not path.exists()
    if made:
        if not create:
            raise NotFoundError(f"no repository at {location}")
        try:
            path.mkdir(parents=True, mode=0o700)
        except OSError as e:  # a parent that is a file, no permission, a read-only file system
            raise os_error(e, f"cannot create the repository directory {location}") from None
    store = LocalStore(path)
    if made:
        store.made_root()
    return _limited(store, options)


def open_repository(location: str, options: StoreOptions | None = None, passphrase: Passphrase = None) -> Repository:
    """The repository at ``location``; a clear error if there is none or it is not ours. ``passphrase``
    (or a function that returns it) unlocks an encrypted one."""
    return Repository.open(open_store(location, options), location, passphrase)
