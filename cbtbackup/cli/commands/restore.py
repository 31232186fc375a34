"""``restore``."""

from __future__ import annotations

import click

from cbtbackup.cli.app import emit, json_option, repo_option
from cbtbackup.cli.progress_bar import make_progress
from cbtbackup.cli.repository_access import open_repo
from cbtbackup.model.sizes import format_size
from cbtbackup.pipeline.restore import RestoreOptions, run_restore


@click.command()
@repo_option
@click.argument("backup")
@click.argument("target")
@click.option("--force", is_flag=True, help="Overwrite an existing file or block device (at least as large).")
@json_option
def restore(repo: str, endpoint_url: str | None, backup: str, target: str, force: bool, as_json: bool) -> None:
    """Restore BACKUP (an id, a unique id prefix, latest or NAME@latest) to TARGET."""
    repository = open_repo(repo, endpoint_url)
    result = run_restore(repository, RestoreOptions(backup, target, force), make_progress())
    emit(as_json, result.to_json(), [
        f"restored {result.manifest.ref.id} ({result.manifest.ref.name}) to {target}: "
        f"{format_size(result.manifest.device_size)}, {result.chunks_fetched} chunks in {result.duration_s:.2f} s"
    ])
