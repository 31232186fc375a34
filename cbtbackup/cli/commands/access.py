"""``mount`` and ``serve``: a repository's backups as files (FUSE) or an NBD export, read-only."""

from __future__ import annotations

import click

from cbtbackup.cli.app import emit, json_option, repo_option
from cbtbackup.cli.repository_access import open_repo
from cbtbackup.model.durations import parse_when
from cbtbackup.model.sizes import parse_size


def _ready(line: str) -> None:
    click.echo(line, err=True)


@click.command()
@repo_option
@click.argument("mountpoint")
@click.option("--name", help="Only the chain of this name.")
@click.option("--backup", "backup", metavar="BACKUP",
              help="Only this backup: an id, NAME@latest or NAME@latest~N (with --at: a chain).")
@click.option("--at", "at", metavar="TIME", help="Only the newest backup at or before TIME (of --name's chain).")
@click.option("--cache-size", default="64MiB", show_default=True,
              help="Decompressed chunks kept in memory, per open backup.")
@json_option
def mount(repo: str, endpoint_url: str | None, mountpoint: str, name: str | None, backup: str | None,
          at: str | None, cache_size: str, as_json: bool) -> None:
    """Mount the backups read-only at MOUNTPOINT: one directory per chain, one image file per backup
    (by id, by time, and latest). Stays in the foreground; Ctrl-C or SIGTERM unmounts.

    To reach files: losetup -r -P -f --show MOUNTPOINT/CHAIN/latest.img, then mount -o ro /dev/loopNp1 DIR."""
    from cbtbackup.access.running import MountOptions, run_mount

    options = MountOptions(mountpoint, name, parse_size(cache_size), backup, parse_when(at) if at else None)
    count = run_mount(open_repo(repo, endpoint_url), options, _ready)
    emit(as_json, {"mountpoint": mountpoint, "backups": count, "unmounted": True}, [f"unmounted {mountpoint}"])


@click.command()
@repo_option
@click.argument("backup")
@click.option("--listen", default=None, metavar="ADDRESS", required=True,
              help="unix:PATH or tcp:127.0.0.1:PORT.")
@click.option("--cache-size", default="64MiB", show_default=True, help="Decompressed chunks kept in memory.")
@click.option("--at", "at", metavar="TIME", help="BACKUP names a chain: serve its newest backup at or before TIME.")
@json_option
def serve(repo: str, endpoint_url: str | None, backup: str, listen: str, cache_size: str, at: str | None,
          as_json: bool) -> None:
    """Serve BACKUP read-only over NBD (qemu-img, qemu-nbd, nbd-client, a VM's disk) until Ctrl-C or SIGTERM."""
    from cbtbackup.access.running import ServeOptions, run_serve

    options = ServeOptions(backup, listen, parse_size(cache_size), parse_when(at) if at else None)
    served = run_serve(open_repo(repo, endpoint_url), options, _ready)
    emit(as_json, {"backup": served, "listen": listen, "stopped": True}, [f"stopped serving {served}"])
