"""``init``, ``list`` and ``verify``."""

from __future__ import annotations

import time
from typing import Any

import click

from cbtbackup.cli.app import emit, json_option, repo_option, warn
from cbtbackup.cli.passphrase import read_passphrase
from cbtbackup.cli.progress_bar import make_progress
from cbtbackup.cli.repository_access import open_new_store, open_repo
from cbtbackup.errors import CorruptDataError
from cbtbackup.model.durations import format_duration, parse_wait
from cbtbackup.model.sizes import format_size, parse_size
from cbtbackup.pipeline.integrity import DamagedBackupError, Sample, run_verify
from cbtbackup.pipeline.stats import bytes_alone
from cbtbackup.repo.chunk_codec import DEFAULT_COMPRESSION
from cbtbackup.repo.config import PRIVATE_NAMES_VERSION, RepositoryConfig
from cbtbackup.repo.manifest import BackupRef
from cbtbackup.repo.repository import Repository
from cbtbackup.repo.retention import MODES as LOCK_MODES
from cbtbackup.repo.sealing import MODES


@click.command()
@repo_option
@click.option("--chunk-size", default="1MiB", show_default=True, help="A power of two from 64KiB to 16MiB.")
@click.option("--compression", default=DEFAULT_COMPRESSION, show_default=True,
              help="none, zstd (level 3) or zstd:LEVEL (1-22).")
@click.option("--encryption", type=click.Choice(MODES), default="aes-256-gcm", show_default=True,
              help="The cipher every object is sealed with; 'none' stores plaintext.")
@click.option("--object-lock", type=click.Choice(LOCK_MODES, case_sensitive=False),
              help="S3 with Object Lock: keep every object immutable for --lock-period after it is written "
                   "(COMPLIANCE: not even the bucket's owner can shorten it).")
@click.option("--lock-period", default="30d", show_default=True, metavar="DURATION",
              help="With --object-lock: how long each object stays locked (90s, 12h, 30d); prune extends the "
                   "locks of what backups still need.")
@click.option("--plain-names", is_flag=True,
              help="Encrypted: keep chain names and backup times readable in object names (format version 1, which "
                   "older versions of cbtbackup read) instead of private ones.")
@json_option
def init(repo: str, endpoint_url: str | None, chunk_size: str, compression: str, encryption: str,
         object_lock: str | None, lock_period: str, plain_names: bool, as_json: bool) -> None:
    """Create a new, empty repository (encrypted unless --encryption none)."""
    private = encryption != "none" and not plain_names
    config = RepositoryConfig(chunk_size=parse_size(chunk_size), compression=compression, encryption=encryption,
                              lock_mode=object_lock.upper() if object_lock else "",
                              lock_seconds=parse_wait(lock_period) if object_lock else 0.0,
                              names="private" if private else "", version=PRIVATE_NAMES_VERSION if private else 1)
    passphrase = read_passphrase(repo, confirm=True) if encryption != "none" else None
    created = Repository.init(open_new_store(repo, endpoint_url), repo, config, passphrase)
    emit(as_json, {"repository": repo, "id": created.config.id, "chunk_size": config.chunk_size,
                   "compression": config.compression, "encryption": encryption, "version": config.version,
                   "key": created.key_slot, "private_names": config.private_names,
                   "conditional_writes": created.conditional_create,
                   "object_lock": {"mode": config.lock_mode, "seconds": config.lock_seconds} if object_lock else None},
         [f"created repository {repo} (chunk size {format_size(config.chunk_size)}, {config.compression}, "
          f"encryption {encryption}{_lock_text(config)})"])
    if not created.conditional_create:
        warn("this store ignores conditional writes (If-None-Match); locks do not depend on them, "
             "see docs/s3.md")


def _lock_text(config: RepositoryConfig) -> str:
    if not config.lock_mode:
        return ""
    return f", every object locked ({config.lock_mode}) for {format_duration(config.lock_seconds)} after its write"


COMPACT_WIDTH = 100  # the default table fits a 100-column terminal; --long shows every column


@click.command(name="list")
@repo_option
@click.option("--chain", "--name", "name", metavar="NAME", help="Only the backups of this chain.")
@click.option("--host", help="Only the backups taken on this host.")
@click.option("--last", type=click.IntRange(min=1), metavar="N", help="Only the N newest backups of each chain.")
@click.option("--long", "long_format", is_flag=True,
              help="Every column: parent, bytes only this backup uses (ALONE), host and source.")
@click.option("--alone/--no-alone", default=None,
              help="Compute ALONE (bytes only this backup uses). Default: with --long or --json for the whole "
                   "repository, not with --chain, since it reads the map of every backup of every chain.")
@json_option
def list_backups(repo: str, endpoint_url: str | None, name: str | None, host: str | None, last: int | None,
                 long_format: bool, alone: bool | None, as_json: bool) -> None:
    """List backups, oldest first within each chain: id, time, kind and method, size, bytes stored when it
    was made, chain; with --long also the parent, the bytes only it still uses (what forgetting it and
    pruning would free), host and source."""
    repository = open_repo(repo, endpoint_url)
    rows: list[dict[str, Any]] = []
    unreadable: list[dict[str, str]] = []
    refs = repository.list_backups(name)
    if last is not None:
        by_chain: dict[str, list[BackupRef]] = {}
        for ref in refs:
            by_chain.setdefault(ref.name, []).append(ref)
        refs = [ref for chain in by_chain.values() for ref in chain[-last:]]
    repository.prefetch_manifests(refs)
    for ref in refs:
        try:
            m = repository.load_manifest(ref)
        except CorruptDataError as e:  # one bad manifest must not hide the others
            unreadable.append({"id": ref.id, "name": ref.name, "error": str(e)})
            continue
        if host is not None and m.host != host:
            continue
        rows.append({
            "id": ref.id, "name": ref.name, "stamp": ref.stamp, "kind": m.kind, "method": m.method,
            "parent": m.parent.id if m.parent else None, "created": m.created, "source": m.source,
            "host": m.host, "synthesized_from": m.synthesized_from, "device_size": m.device_size,
            "bytes_changed": m.stats.bytes_changed,
            "bytes_stored": m.stats.bytes_stored,
        })
    # ALONE needs every backup's map: one chain's list in a bucket of many hosts would read them all.
    wanted = alone if alone is not None else name is None and (long_format or as_json)
    if wanted:
        only = bytes_alone(repository, [BackupRef(r["name"], r["stamp"], r["id"]) for r in rows])
        for r in rows:
            r["bytes_alone"] = only.get(r["id"], 0)
    else:
        for r in rows:
            r["bytes_alone"] = None
    lines = _long_table(rows) if long_format else _compact_table(rows)
    for bad in unreadable:
        warn(f"backup {bad['id']} ({bad['name']}) cannot be read: {bad['error']}")
    emit(as_json, {"backups": rows, "unreadable": unreadable}, lines)


def _when(row: dict[str, Any]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["created"]))


def _compact_table(rows: list[dict[str, Any]]) -> list[str]:
    head = f"{'ID':16}  {'TIME (UTC)':19}  {'KIND':9}  {'SIZE':>8}  {'STORED':>8}  "
    room = COMPACT_WIDTH - len(head)
    lines = [head + "CHAIN"]
    for r in rows:
        kind = "full" if r["kind"] == "full" else f"incr/{r['method']}"
        chain = r["name"] if len(r["name"]) <= room else r["name"][:room - 1] + "…"
        lines.append(f"{r['id']:16}  {_when(r):19}  {kind:9}  {format_size(r['device_size']):>8}  "
                     f"{format_size(r['bytes_stored']):>8}  {chain}")
    return lines


def _long_table(rows: list[dict[str, Any]]) -> list[str]:
    width = max([len("NAME"), *(len(r["name"]) for r in rows)])
    lines = [f"{'ID':16}  {'NAME':{width}}  {'KIND':4}  {'METHOD':9}  {'PARENT':16}  {'TIME (UTC)':19}  "
             f"{'SIZE':>10}  {'STORED':>10}  {'ALONE':>10}  HOST:SOURCE"]
    for r in rows:
        alone_text = format_size(r["bytes_alone"]) if r["bytes_alone"] is not None else "-"
        lines.append(f"{r['id']:16}  {r['name']:{width}}  {r['kind']:4}  {r['method']:9}  {r['parent'] or '-':16}  "
                     f"{_when(r):19}  {format_size(r['device_size']):>10}  {format_size(r['bytes_stored']):>10}  "
                     f"{alone_text:>10}  {r['host'] or '?'}:{r['source']}")
    return lines


@click.command()
@repo_option
@click.argument("backup", required=False)
@click.option("--repair", is_flag=True,
              help="The whole repository: every stored chunk and manifest; move unreadable manifests aside and "
                   "clear quarantine entries whose chunks are whole again.")
@click.option("--read-data-subset", "subset", metavar="PERCENT|SIZE",
              help="Read a random part of the chunks only: a percentage (5%) or about a size (1GiB).")
@json_option
def verify(repo: str, endpoint_url: str | None, backup: str | None, repair: bool, subset: str | None,
           as_json: bool) -> None:
    """Check every chunk a backup (default: every backup) needs; quarantine the bad ones."""
    sample = Sample.parse(subset) if subset else None
    result = run_verify(open_repo(repo, endpoint_url), backup, make_progress(), repair=repair, sample=sample)
    lines = [f"quarantined {key}: {why}" for key, why in result.quarantined.items()]
    lines += [f"unreadable manifest {key}: {why}" for key, why in result.unreadable.items()]
    lines += [f"healed {key}" for key in result.healed]
    lines += [f"{'repaired' if key in result.repaired else 'damaged'} {key}: {why}"
              for key, why in result.damaged_metadata.items()]
    lines += [f"{'rebuilt' if key in result.repaired else 'stale'} {key}: {why}"
              for key, why in result.stale.items()]
    if not result.ok:
        if not as_json:
            for line in lines:
                click.echo(line)
        raise DamagedBackupError(result.problem(), details=result.to_json())
    lines.append(f"ok: {len(result.backups)} backup(s), {result.chunks_checked} chunks, "
                 f"{format_size(result.bytes_checked)} checked")
    emit(as_json, result.to_json(), lines)
