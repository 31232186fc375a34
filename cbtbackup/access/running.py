"""Running the front ends in the foreground until SIGTERM or Ctrl-C, and tearing them down cleanly."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cbtbackup.access.fuse_tree import BackupTree, serve
from cbtbackup.access.nbd_server import listen, serve_forever
from cbtbackup.engine.attach import system_tools
from cbtbackup.engine.attach.daemon import check_fuse
from cbtbackup.errors import CbtError, UsageError
from cbtbackup.pipeline.reader import BackupReader
from cbtbackup.repo.repository import Repository

Ready = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class MountOptions:
    mountpoint: str
    name: str | None = None
    cache_bytes: int = 64 << 20
    backup: str | None = None  # one backup only: an id, NAME@latest, NAME@latest~N, or a chain with ``at``
    at: float | None = None


def run_mount(repo: Repository, options: MountOptions, ready: Ready) -> int:
    """Mount until SIGTERM or Ctrl-C (which unmount); how many backups the tree showed."""
    where = Path(os.path.abspath(options.mountpoint))  # as /proc/self/mounts names it
    if not where.is_dir():
        raise UsageError(f"mount point {where} is not a directory")
    if system_tools.is_mount_point(where):
        raise UsageError(f"{where} is a mount point already")
    check_fuse()
    only = None
    if options.backup is not None or options.at is not None:
        spec = options.backup or options.name or "latest"
        only = repo.find_at(spec, options.at) if options.at is not None else repo.find(spec)
    tree = BackupTree(repo, options.name, options.cache_bytes, only)
    if not tree.files:
        raise UsageError("no backups to mount" + (f" named {options.name!r}" if options.name else ""))
    thread = threading.Thread(target=serve, args=(tree, str(where)), name="fuse", daemon=True)
    thread.start()
    try:  # from here on, whatever happens (a signal during the start too) ends with the unmount
        deadline = time.monotonic() + 15
        while not system_tools.is_mount_point(where):
            if not thread.is_alive() or time.monotonic() > deadline:
                raise CbtError(f"could not mount FUSE at {where}")
            time.sleep(0.02)
        ready(f"mounted {len(tree.files)} backup(s) of {repo.location} at {where}; Ctrl-C or SIGTERM unmounts")
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:  # Ctrl-C, and SIGTERM (the command line unwinds it the same way)
        pass
    finally:
        if system_tools.is_mount_point(where):
            try:
                system_tools.unmount(where)
            except CbtError:
                system_tools.unmount(where, lazy=True)
        thread.join(10)
    return len(tree.files)


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    backup: str
    listen: str
    cache_bytes: int = 64 << 20
    at: float | None = None


def run_serve(repo: Repository, options: ServeOptions, ready: Ready) -> str:
    """Serve one backup over NBD until SIGTERM or Ctrl-C; the id of the backup served."""
    ref = repo.find_at(options.backup, options.at) if options.at is not None else repo.find(options.backup)
    reader = BackupReader(repo, ref, options.cache_bytes)
    server = listen(options.listen)
    stop = threading.Event()
    thread = threading.Thread(target=serve_forever, args=(server, reader, ref.id, stop), daemon=True)
    thread.start()
    try:
        ready(f"serving backup {ref.id} ({ref.name}, {reader.size} bytes) read-only over NBD at {options.listen} "
              f"(export name {ref.id!r}); Ctrl-C or SIGTERM stops")
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        thread.join(5)
        server.close()
        reader.close()
        if options.listen.startswith("unix:"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(options.listen[len("unix:"):])
    return ref.id
