"""``full`` and ``incr``."""

from __future__ import annotations

from typing import Literal

import click

from cbtbackup.cli.app import emit, json_option, repo_option
from cbtbackup.cli.progress_bar import make_progress
from cbtbackup.engine.providers import PROVIDERS
from cbtbackup.model.sizes import format_size
from cbtbackup.pipeline.backup import BackupOptions, run_backup
from cbtbackup.repo.location import StoreOptions, open_repository


def _backup(repo: str, endpoint_url: str | None, source: str, kind: Literal["full", "incr"], name: str | None,
            provider: str, state_dir: str | None, freeze: str | None, as_json: bool) -> None:
    options = BackupOptions(source=source, kind=kind, name=name, provider=provider, state_dir=state_dir,
                            freeze=freeze)
    result = run_backup(open_repository(repo, StoreOptions(endpoint_url)), options, make_progress())
    m, s = result.manifest, result.manifest.stats
    emit(as_json, result.to_json(), [
        f"backup {m.ref.id} ({m.ref.name}): {m.kind} by {m.method}, "
        f"{format_size(s.bytes_scanned)} read, {format_size(s.bytes_changed)} changed, "
        f"{format_size(s.bytes_stored)} stored ({s.chunks_new} new chunks, {s.chunks_reused} reused) "
        f"in {s.duration_s:.2f} s"
    ])


def _backup_command(kind: Literal["full", "incr"], doc: str) -> click.Command:
    @click.command(name=kind, help=doc)
    @repo_option
    @click.argument("source")
    @click.option("--name", help="The backup chain's name (default: the source's file name).")
    @click.option("--provider", type=click.Choice(PROVIDERS), default="auto", show_default=True,
                  help="userspace: a tracked image; scan: read everything; auto: userspace if tracked.")
    @click.option("--state-dir", help="Where the tracker keeps its state, if not beside the image.")
    @click.option("--freeze", metavar="MOUNTPOINT",
                  help="Freeze the file system mounted here (on an attached volume) around the snapshot.")
    @json_option
    def command(repo: str, endpoint_url: str | None, source: str, name: str | None, provider: str,
                state_dir: str | None, freeze: str | None, as_json: bool) -> None:
        _backup(repo, endpoint_url, source, kind, name, provider, state_dir, freeze, as_json)

    return command


full = _backup_command("full", "Back up the whole of SOURCE (an image file or block device).")
incr = _backup_command(
    "incr",
    "Back up what changed in SOURCE since its previous backup: by CBT when it can be trusted, "
    "otherwise by a scan (or a full when there is no previous backup).",
)
