"""``cbtbackup cache``: the local manifest cache of remote repositories — where it is, what it holds, and
removing the folders of repositories not used for a while."""

from __future__ import annotations

import time

import click

from cbtbackup.cli.app import emit, json_option
from cbtbackup.model.durations import parse_age
from cbtbackup.model.sizes import format_size
from cbtbackup.repo.manifest_cache import DEFAULT_MAX_AGE, cache_folders, default_cache_root, remove_unused


@click.command()
@click.option("--cleanup", is_flag=True, help="Remove the folders of repositories not opened for --max-age.")
@click.option("--max-age", metavar="AGE", default="30d", show_default=True,
              help="With --cleanup: how long unused (36h, 30d, 2w).")
@json_option
def cache(cleanup: bool, max_age: str, as_json: bool) -> None:
    """Show the manifest cache ($CBTBACKUP_CACHE_DIR, else $XDG_CACHE_HOME/cbtbackup, else
    ~/.cache/cbtbackup): one folder per repository; deleting any of it is harmless."""
    root = default_cache_root()
    age = parse_age(max_age) if max_age else DEFAULT_MAX_AGE
    removed = remove_unused(root, age) if cleanup else []
    folders = cache_folders(root)
    now = time.time()
    payload = {"root": str(root),
               "repositories": [{"id": f.repository_id, "files": f.files, "bytes": f.size, "used": f.used}
                                for f in folders],
               "removed": [{"id": f.repository_id, "bytes": f.size, "used": f.used} for f in removed]}
    lines = [f"cache: {root}"]
    lines += [f"  {f.repository_id}  {f.files} manifests, {format_size(f.size)}, used "
              f"{(now - f.used) / 86400:.0f} days ago" for f in folders]
    if cleanup:
        freed = sum(f.size for f in removed)
        lines.append(f"removed {len(removed)} folder(s) unused for {max_age}, {format_size(freed)} freed")
    emit(as_json, payload, lines)
