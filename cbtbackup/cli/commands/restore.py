"""``restore`` and ``diff``."""

from __future__ import annotations

import click

from cbtbackup.cli.app import ceph_options, emit, json_option, repo_option
from cbtbackup.cli.progress_bar import make_progress
from cbtbackup.cli.repository_access import open_repo
from cbtbackup.engine.qemu.images import is_qcow2
from cbtbackup.engine.rbd.cluster import CephOptions
from cbtbackup.engine.rbd.names import is_rbd
from cbtbackup.errors import UsageError
from cbtbackup.model.durations import parse_when
from cbtbackup.model.sizes import format_size
from cbtbackup.pipeline.diff import run_diff
from cbtbackup.pipeline.export_diff import run_export_diff
from cbtbackup.pipeline.restore import STDOUT, RestoreOptions, run_restore
from cbtbackup.pipeline.restore_qcow2 import run_restore_qcow2


@click.command()
@repo_option
@click.argument("backup")
@click.argument("target")
@click.option("--force", is_flag=True, help="Overwrite an existing file or block device (at least as large).")
@click.option("--onto-existing", is_flag=True,
              help="TARGET is a stale copy of the same device: write only the blocks that differ.")
@click.option("--format", "image_format", type=click.Choice(["raw", "qcow2"]), default="raw", show_default=True,
              help="qcow2: a new qcow2 image, or with --force written into the qcow2 image TARGET (qemu-img).")
@click.option("--at", "at", metavar="TIME",
              help="BACKUP names a chain (NAME, or latest): take its newest backup at or before TIME "
                   "('2026-11-20 13:00', local time; a trailing Z for UTC).")
@ceph_options
@json_option
def restore(repo: str, endpoint_url: str | None, backup: str, target: str, force: bool, onto_existing: bool,
            image_format: str, at: str | None, ceph: CephOptions, as_json: bool) -> None:
    """Restore BACKUP (an id, a unique id prefix, latest, NAME@latest or NAME@latest~N) to TARGET, a file
    or block device, an RBD image (rbd:POOL/IMAGE), or - for standard output."""
    repository = open_repo(repo, endpoint_url)
    options = RestoreOptions(backup, target, force, onto_existing, parse_when(at) if at else None, ceph)
    if image_format == "qcow2":
        if target == STDOUT or is_rbd(target):
            raise UsageError("--format qcow2 writes a file, not standard output or an RBD image")
        result = run_restore_qcow2(repository, options, make_progress())
    else:
        if (force or onto_existing) and target != STDOUT and not is_rbd(target) and is_qcow2(target):
            raise UsageError(f"{target} is a qcow2 image: add --format qcow2 to write the backup into it")
        result = run_restore(repository, options, make_progress())
    m = result.manifest
    line = (f"restored {m.ref.id} ({m.ref.name}) to {'standard output' if target == STDOUT else target}: "
            f"{format_size(m.device_size)}, {result.chunks_fetched} chunks in {result.duration_s:.2f} s")
    if onto_existing and image_format == "raw":
        line += (f"; read {format_size(result.bytes_read)} of the target, wrote {format_size(result.bytes_written)}")
    emit(as_json, result.to_json(), [line], err=target == STDOUT)  # the image owns standard output


@click.command()
@repo_option
@click.argument("a")
@click.argument("b")
@json_option
def diff(repo: str, endpoint_url: str | None, a: str, b: str, as_json: bool) -> None:
    """The byte ranges where backups A and B differ (from their manifests; no chunk is read)."""
    result = run_diff(open_repo(repo, endpoint_url), a, b)
    lines = [f"{offset:>14}  {length:>12}  ({format_size(length)})" for offset, length in result.ranges]
    lines.append(f"{len(result.ranges)} range(s), {format_size(result.bytes_differing)} differ between "
                 f"{result.a.id} and {result.b.id}")
    emit(as_json, result.to_json(), lines)


@click.command(name="export-diff")
@repo_option
@click.argument("backup")
@click.argument("target")
@click.option("--from", "since", metavar="BACKUP",
              help="An older backup of the same chain: the stream takes an image holding it to BACKUP "
                   "(default: the whole of BACKUP).")
@click.option("--force", is_flag=True, help="Replace an existing file TARGET.")
@click.option("--no-snapshot-names", is_flag=True,
              help="Leave out the from/to snapshot records: rbd import-diff then neither checks that the image "
                   "holds the older backup nor takes a snapshot named for BACKUP.")
@json_option
def export_diff(repo: str, endpoint_url: str | None, backup: str, target: str, since: str | None, force: bool,
                no_snapshot_names: bool, as_json: bool) -> None:
    """Write BACKUP as an `rbd export-diff` stream (v1) to TARGET, a file or - for standard output, for
    `rbd import-diff TARGET POOL/IMAGE` — from a backup of any source."""
    result = run_export_diff(open_repo(repo, endpoint_url), backup, since, target, force=force,
                             snapshot_names=not no_snapshot_names, progress=make_progress())
    line = (f"exported {result.backup.id} ({result.backup.name})"
            f"{f' since {result.since.id}' if result.since else ''} to "
            f"{'standard output' if target == '-' else target}: {result.records} records, "
            f"{format_size(result.bytes_data)} of data, {format_size(result.bytes_zero)} of zeros "
            f"in {result.duration_s:.2f} s")
    emit(as_json, result.to_json(), [line], err=target == "-")
