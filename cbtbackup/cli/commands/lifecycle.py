"""``forget``, ``prune``, ``synthesize``, ``stats`` and ``unlock``: a repository's life over the years."""

from __future__ import annotations

import math
import time

import click

from cbtbackup.cli.app import emit, json_option, repo_option
from cbtbackup.cli.progress_bar import make_progress
from cbtbackup.cli.repository_access import open_repo
from cbtbackup.errors import UsageError
from cbtbackup.model.durations import format_when, parse_age, parse_wait
from cbtbackup.model.retention import RetentionPolicy
from cbtbackup.model.sizes import format_size
from cbtbackup.pipeline.forget import ForgetOptions, run_forget
from cbtbackup.pipeline.prune import PruneOptions, PruneResult, run_prune
from cbtbackup.pipeline.repack import REPACK_OVER
from cbtbackup.pipeline.stats import run_stats
from cbtbackup.pipeline.synthesize import run_synthesize

WAIT_HELP = "Wait up to this long for other writers' locks (30s, 5m, 1h) instead of failing at once."


def wait_lock_option(f: click.decorators.FC) -> click.decorators.FC:
    return click.option("--wait-lock", metavar="DURATION", help=WAIT_HELP)(f)


def _wait(text: str | None) -> float:
    return parse_wait(text) if text is not None else 0.0


def _prune_lines(r: PruneResult) -> list[str]:
    verb = "would delete" if r.dry_run else "deleted"
    count, size = (r.chunks_unused, r.bytes_unused) if r.dry_run else (r.chunks_deleted, r.bytes_deleted)
    lines = []
    if r.repack.windows_rewritten:
        rp = r.repack
        lines.append(f"repack: {'would rewrite' if r.dry_run else 'rewrote'} {rp.windows_rewritten} windows "
                     f"({format_size(rp.bytes_rewritten)}) of {rp.fulls_repacked} full(s) into whole chunks"
                     + ("" if r.dry_run else f", {rp.chunks_new} new ({format_size(rp.bytes_stored)} stored)"))
    lines.append(f"prune: {r.backups} backup(s), {r.chunks} chunks; {verb} {count} unused chunks "
                 f"({format_size(size)})")
    if r.chunks_kept_locked:
        lines.append(f"kept {r.chunks_kept_locked} unused chunks ({format_size(r.bytes_kept_locked)}) still locked, "
                     f"the last until {format_when(r.locked_until)}")
    if r.retention_extended:
        lines.append(f"extended the lock of {r.retention_extended} object(s) still needed")
    if r.incomplete_removed or r.heads_removed:
        lines.append(f"removed {r.incomplete_removed} leftover(s) of killed runs and {r.heads_removed} stale head(s)")
    return lines


@click.command()
@repo_option
@click.argument("ids", nargs=-1)
@click.option("--name", help="Only the chain of this name.")
@click.option("--keep-last", type=int, default=0, help="Keep the N newest backups.")
@click.option("--keep-hourly", type=int, default=0, help="Keep the newest backup of each of the last N hours.")
@click.option("--keep-daily", type=int, default=0, help="... of each of the last N days.")
@click.option("--keep-weekly", type=int, default=0, help="... of each of the last N ISO weeks.")
@click.option("--keep-monthly", type=int, default=0, help="... of each of the last N months.")
@click.option("--keep-yearly", type=int, default=0, help="... of each of the last N years.")
@click.option("--keep-within", metavar="AGE", help="Keep every backup within AGE (36h, 30d, 6m, 1y) of the newest.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; change nothing.")
@click.option("--prune", "and_prune", is_flag=True, help="Prune afterwards.")
@wait_lock_option
@json_option
def forget(repo: str, endpoint_url: str | None, ids: tuple[str, ...], name: str | None, keep_last: int,
           keep_hourly: int, keep_daily: int, keep_weekly: int, keep_monthly: int, keep_yearly: int,
           keep_within: str | None, dry_run: bool, and_prune: bool, wait_lock: str | None, as_json: bool) -> None:
    """Remove backups: those named by ID, or those no --keep-* rule keeps (each chain separately).

    A removed backup's data is folded into the backups that depend on it, so every kept backup restores
    exactly as before. Chunks are freed by prune."""
    rules = (keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within)
    policy = None
    if any(rules):
        policy = RetentionPolicy(keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly,
                                 parse_age(keep_within) if keep_within else 0.0)
    repository = open_repo(repo, endpoint_url)
    progress = make_progress()
    result = run_forget(repository, ForgetOptions(ids, name, policy, dry_run, _wait(wait_lock)), progress)
    lines = [f"keep   {r.id}  {r.name}  ({', '.join(why)})" for r, why in result.kept]
    lines += [f"{'would remove' if dry_run else 'remove'} {r.id}  {r.name}" for r in result.removed]
    lines += [f"keep   {r.id}  {r.name}  (due, but locked until {format_when(until)})" for r, until in result.locked]
    payload = result.to_json()
    if and_prune:
        pruned = run_prune(repository, PruneOptions(dry_run, _wait(wait_lock)), progress)
        lines += _prune_lines(pruned)
        payload["prune"] = pruned.to_json()
    emit(as_json, payload, lines)


@click.command()
@repo_option
@click.option("--dry-run", is_flag=True, help="Count what would be repacked and deleted; change nothing.")
@click.option("--no-repack", is_flag=True,
              help="Do not rewrite the windows of fulls that have become costly to read (see docs/design.md).")
@click.option("--repack-over", type=click.FloatRange(min=1.0, min_open=True), default=REPACK_OVER, show_default=True,
              metavar="RATIO",
              help="Rewrite a window of a full when reading it costs this many times its data, or more: higher "
                   "rewrites less often, restores of long-kept chains get slower.")
@wait_lock_option
@json_option
def prune(repo: str, endpoint_url: str | None, dry_run: bool, no_repack: bool, repack_over: float,
          wait_lock: str | None, as_json: bool) -> None:
    """Rewrite what has become costly to read, delete chunks no backup needs, and what killed runs left
    behind."""
    if not math.isfinite(repack_over):
        raise UsageError("--repack-over is a ratio above 1 (1.2, 1.5)")
    options = PruneOptions(dry_run, _wait(wait_lock), not no_repack, repack_over)
    result = run_prune(open_repo(repo, endpoint_url), options, make_progress())
    emit(as_json, result.to_json(), _prune_lines(result))


@click.command()
@repo_option
@click.argument("backup")
@wait_lock_option
@json_option
def synthesize(repo: str, endpoint_url: str | None, backup: str, wait_lock: str | None, as_json: bool) -> None:
    """Write a synthetic full of BACKUP: the same image, no parent, no data moved."""
    m = run_synthesize(open_repo(repo, endpoint_url), backup, _wait(wait_lock))
    emit(as_json, {"id": m.ref.id, "name": m.ref.name, "synthesized_from": m.synthesized_from,
                   "extent_count": len(m.extents)},
         [f"synthetic full {m.ref.id} ({m.ref.name}) of {m.synthesized_from}: {len(m.extents)} extents"])


@click.command()
@repo_option
@click.option("--name", help="Only the chain of this name.")
@click.option("--prometheus", is_flag=True,
              help="Print Prometheus' text format (for node_exporter's textfile collector) instead.")
@json_option
def stats(repo: str, endpoint_url: str | None, name: str | None, prometheus: bool, as_json: bool) -> None:
    """Backups, logical and stored size and deduplication ratio, per chain and in total."""
    if prometheus and as_json:
        raise UsageError("--prometheus and --json are two formats; choose one")
    result = run_stats(open_repo(repo, endpoint_url), name)
    if prometheus:
        from cbtbackup.access.prometheus import stats_exposition  # loaded only for it: prometheus-client

        click.echo(stats_exposition(result).decode(), nl=False)
        return
    width = max([len("CHAIN"), *(len(c.name) for c in result.chains)])
    lines = [f"{'CHAIN':{width}}  {'BACKUPS':>7}  {'LOGICAL':>10}  {'STORED':>10}  {'DEDUP':>6}"]
    for c in [*result.chains, result.total]:
        lines.append(f"{c.name:{width}}  {c.backups:>7}  {format_size(c.logical_bytes):>10}  "
                     f"{format_size(c.stored_bytes):>10}  {c.dedup_ratio:>5}x")
    emit(as_json, result.to_json(), lines)


@click.command()
@repo_option
@click.option("--remove-all", is_flag=True, help="Remove every lock, also live ones (only when nothing runs).")
@json_option
def unlock(repo: str, endpoint_url: str | None, remove_all: bool, as_json: bool) -> None:
    """Remove stale locks: of processes gone from this host, or not refreshed in time."""
    removed = open_repo(repo, endpoint_url).locks.remove(everything=remove_all)
    now = time.time()
    emit(as_json, {"removed": [{"id": i.id, "holder": i.describe(), "why": why} for i, why in removed]},
         [f"removed lock of {i.describe()}: {why} (age {int(now - i.created)} s)" for i, why in removed]
         or ["no stale locks"])


@click.command()
@repo_option
@wait_lock_option
@json_option
def upgrade(repo: str, endpoint_url: str | None, wait_lock: str | None, as_json: bool) -> None:
    """Give an encrypted repository private object names (format version 2); run again to finish one killed."""
    from cbtbackup.pipeline.upgrade import run_upgrade

    result = run_upgrade(open_repo(repo, endpoint_url), make_progress(), _wait(wait_lock))
    lines = [f"upgraded {repo} to format version {result.version}: private object names ({result.manifests} "
             f"manifest(s) and {result.heads} head(s) sealed under them); write-only keys made before no longer "
             "open it: export new ones" if result.upgraded else
             f"{repo} has private object names already (format version {result.version})"]
    if result.unreadable:
        lines.append(f"{len(result.unreadable)} unreadable manifest(s) moved to quarantine as they were")
    if result.old_objects_removed or result.key_slots_sealed:
        lines.append(f"removed {result.old_objects_removed} object(s) under old names, sealed the host and time "
                     f"of {result.key_slots_sealed} key slot(s)")
    emit(as_json, result.to_json(), lines)
