"""``mount``, ``serve`` and ``web``: a repository's backups as files (FUSE), an NBD export, or a status page —
all read-only."""

from __future__ import annotations

import click

from cbtbackup.cli.app import emit, json_option, repo_option
from cbtbackup.cli.repository_access import open_repo
from cbtbackup.model.durations import parse_wait, parse_when
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

    options = MountOptions(mountpoint, name, parse_size(cache_size), backup, parse_when(at) if at is not None else None)
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

    options = ServeOptions(backup, listen, parse_size(cache_size), parse_when(at) if at is not None else None)
    served = run_serve(open_repo(repo, endpoint_url), options, _ready)
    emit(as_json, {"backup": served, "listen": listen, "stopped": True}, [f"stopped serving {served}"])


@click.command()
@repo_option
@click.option("--listen", default="127.0.0.1:8080", show_default=True, metavar="HOST:PORT",
              help="Where to serve the page; an address other than loopback needs a token.")
@click.option("--stale-after", default="26h", show_default=True, metavar="DURATION",
              help="Flag a chain whose newest backup is older than this.")
@click.option("--token-file", metavar="FILE",
              help="Require the token in FILE's first line (or set CBTBACKUP_WEB_TOKEN).")
@click.option("--refresh", default="30s", show_default=True, metavar="DURATION",
              help="Read the repository again at most this often, however many look.")
@json_option
def web(repo: str, endpoint_url: str | None, listen: str, stale_after: str, token_file: str | None, refresh: str,
        as_json: bool) -> None:
    """Serve a read-only status page of the repository (chains, ages, sizes, a plot per chain; a JSON API and
    Prometheus metrics) until Ctrl-C or SIGTERM. Takes no locks: backups run on."""
    import os

    from cbtbackup.access.web import WebOptions, run_web
    from cbtbackup.errors import UsageError
    from cbtbackup.repo.secret_sources import password_from_file

    token = password_from_file(token_file) if token_file else os.environ.get("CBTBACKUP_WEB_TOKEN") or None
    if token is not None and len(token) < 16:
        raise UsageError("the web token is shorter than 16 characters; make a longer one (openssl rand -hex 16)")
    stale, every = parse_wait(stale_after), parse_wait(refresh)
    if stale <= 0:
        raise UsageError("--stale-after must be more than 0")
    options = WebOptions(listen, stale, token, every)
    run_web(open_repo(repo, endpoint_url), options, _ready)
    emit(as_json, {"listen": listen, "stopped": True}, ["stopped serving the status page"])
