"""``init``, ``list`` and ``verify``."""

from __future__ import annotations

import time
from typing import Any

import click

from cbtbackup.cli.app import emit, json_option, repo_option
from cbtbackup.cli.progress_bar import make_progress
from cbtbackup.model.sizes import format_size, parse_size
from cbtbackup.pipeline.integrity import run_verify
from cbtbackup.repo.config import RepositoryConfig
from cbtbackup.repo.location import StoreOptions, open_repository, open_store
from cbtbackup.repo.repository import Repository


@click.command()
@repo_option
@click.option("--chunk-size", default="1MiB", show_default=True, help="A power of two from 64KiB to 16MiB.")
@click.option("--compression", default="zstd:3", show_default=True, help="none, zstd or zstd:LEVEL (1-22).")
@json_option
def init(repo: str, endpoint_url: str | None, chunk_size: str, compression: str, as_json: bool) -> None:
    """Create a new, empty repository."""
    config = RepositoryConfig(chunk_size=parse_size(chunk_size), compression=compression)
    created = Repository.init(open_store(repo, StoreOptions(endpoint_url), create=True), repo, config)
    emit(as_json, {"repository": repo, "id": created.config.id, "chunk_size": config.chunk_size,
                   "compression": config.compression, "version": config.version},
         [f"created repository {repo} (chunk size {format_size(config.chunk_size)}, {config.compression})"])


@click.command(name="list")
@repo_option
@click.option("--name", help="Only the backups of this source name.")
@json_option
def list_backups(repo: str, endpoint_url: str | None, name: str | None, as_json: bool) -> None:
    """List backups: id, kind, parent, time, size and stored bytes."""
    repository = open_repository(repo, StoreOptions(endpoint_url))
    rows: list[dict[str, Any]] = []
    for ref in repository.list_backups(name):
        m = repository.load_manifest(ref)
        rows.append({
            "id": ref.id, "name": ref.name, "kind": m.kind, "method": m.method,
            "parent": m.parent.id if m.parent else None, "created": m.created, "source": m.source,
            "device_size": m.device_size, "bytes_changed": m.stats.bytes_changed,
            "bytes_stored": m.stats.bytes_stored,
        })
    lines = [f"{'ID':16}  {'NAME':16}  {'KIND':4}  {'METHOD':6}  {'PARENT':16}  {'TIME (UTC)':19}  "
             f"{'SIZE':>10}  {'STORED':>10}"]
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["created"]))
        lines.append(f"{r['id']:16}  {r['name']:16}  {r['kind']:4}  {r['method']:6}  {r['parent'] or '-':16}  "
                     f"{when:19}  {format_size(r['device_size']):>10}  {format_size(r['bytes_stored']):>10}")
    emit(as_json, {"backups": rows}, lines)


@click.command()
@repo_option
@click.argument("backup", required=False)
@json_option
def verify(repo: str, endpoint_url: str | None, backup: str | None, as_json: bool) -> None:
    """Read and check every chunk a backup (default: every backup) needs, writing nothing."""
    result = run_verify(open_repository(repo, StoreOptions(endpoint_url)), backup, make_progress())
    emit(as_json, result.to_json(),
         [f"ok: {len(result.backups)} backup(s), {result.chunks_checked} chunks, "
          f"{format_size(result.bytes_checked)} checked"])
