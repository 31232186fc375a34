"""Running a job: for each source, in order — its ``before`` hook, the backup (full or incremental as the job's
rules say, with the ``before_snapshot``/``after_snapshot`` hooks around the take), retention of its chain, a
sample check of the new backup, its ``after`` hook (and ``on_failure`` when something failed); then one prune,
the job's own ``after``/``on_failure`` hooks, the notifications and the metrics file.

One source failing never stops the others; every failure is one line in the report and on stderr. Only
Ctrl-C or SIGTERM end a job early, and even then a snapshot hook's release runs.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from cbtbackup.engine.rbd.cluster import CephOptions
from cbtbackup.engine.rbd.names import is_rbd
from cbtbackup.errors import CbtError
from cbtbackup.jobs.hook_runner import HookOutcome, run_hook
from cbtbackup.jobs.job_file import FullPolicy, HookCommand, Hooks, Job, RepositorySettings, SourceSpec
from cbtbackup.jobs.metrics import write_job_metrics
from cbtbackup.jobs.notify import deliver, should_notify
from cbtbackup.jobs.report import JobReport, SourceResult
from cbtbackup.model.durations import format_when
from cbtbackup.model.sizes import format_size
from cbtbackup.pipeline.backup import BackupOptions, run_backup
from cbtbackup.pipeline.chains import chain_for, default_name, this_host
from cbtbackup.pipeline.differential import LAST_FULL
from cbtbackup.pipeline.forget import ForgetOptions, run_forget
from cbtbackup.pipeline.integrity import run_verify
from cbtbackup.pipeline.progress import NullProgress, Progress
from cbtbackup.pipeline.prune import PruneOptions, run_prune
from cbtbackup.repo.key_file import read_key_file
from cbtbackup.repo.location import StoreOptions, open_repository
from cbtbackup.repo.manifest import check_name
from cbtbackup.repo.repository import Passphrase, Repository, Secret
from cbtbackup.repo.secret_sources import password_from_command, password_from_file

DAY = 86400.0


class HookFailedError(CbtError):
    """A hook that must succeed did not; the backup it guards is not made."""


def _warn(message: str) -> None:
    sys.stderr.write(f"cbtbackup: warning: {message}\n")
    sys.stderr.flush()


@dataclasses.dataclass(frozen=True)
class RunOptions:
    dry_run: bool = False
    metrics_file: str | None = None  # instead of the job's own
    progress: Callable[[], Progress] = NullProgress  # a fresh one per backup (the CLI's tqdm bar)
    warn: Callable[[str], None] = _warn  # a line on stderr as it happens: a hook or notification failed


def _secret(settings: RepositorySettings) -> Passphrase:
    """What opens the repository, asked for only if it is encrypted; the environment as for the CLI."""
    def secret() -> Secret | None:
        if settings.key_file:
            return read_key_file(settings.key_file)
        if settings.password_file:
            return password_from_file(settings.password_file)
        if settings.password_command:
            return password_from_command(settings.password_command, "repository.password_command")
        if key_file := os.environ.get("CBTBACKUP_KEY_FILE"):
            return read_key_file(key_file)
        return os.environ.get("CBTBACKUP_PASSWORD")
    return secret


def open_job_repository(settings: RepositorySettings) -> Repository:
    options = StoreOptions(endpoint_url=settings.endpoint_url or os.environ.get("CBTBACKUP_S3_ENDPOINT"),
                           s3_timeout=settings.s3_timeout)
    return open_repository(settings.location, options, _secret(settings))


def planned_chain(repo: Repository, spec: SourceSpec) -> str:
    """The chain a backup of ``spec`` will go into, to choose full or incremental. The backup pipeline decides
    for itself (a loop device of an attached image is backed up as the image) and refuses another source's
    chain; a plan that guesses wrong only finds no history, and a backup with no parent is a full anyway."""
    if spec.chain:
        return check_name(spec.chain)
    source = spec.path if is_rbd(spec.path) else str(Path(spec.path).absolute())
    try:
        return chain_for(repo, source, None, False)
    except CbtError:
        return default_name(source)


def choose_kind(repo: Repository, chain: str, policy: FullPolicy, now: float) -> tuple[Literal["full", "incr"], str]:
    """Full or incremental, and why: the chain's history against the job's ``[full]`` rules."""
    refs = repo.list_backups(chain)
    if not refs:
        return "full", "the chain has no backup yet"
    if not (policy.every_backups or policy.every_days or policy.differentials):
        return "incr", f"after {refs[-1].id}"
    since_full = 0
    last_full = None
    for ref in reversed(refs):
        manifest = repo.load_manifest(ref)
        if manifest.kind == "full":
            last_full = manifest
            break
        since_full += 1
    if last_full is None:
        return "full", "the chain holds no full"
    if policy.every_backups and since_full + 1 >= policy.every_backups:
        return "full", f"every {policy.every_backups} backups a full ({since_full} incrementals since the last)"
    if policy.every_days and now - last_full.created >= policy.every_days * DAY:
        return "full", f"the last full is from {format_when(last_full.created)}, over {policy.every_days:g} days ago"
    if policy.differentials:
        return "incr", f"a differential since the last full {last_full.ref.id}"
    return "incr", f"after {refs[-1].id}"


def _facts(job: Job, result: SourceResult | None = None) -> dict[str, str]:
    facts = {"CBTBACKUP_JOB": job.name, "CBTBACKUP_JOB_FILE": job.file,
             "CBTBACKUP_REPOSITORY": job.repository.location}
    if result is not None:
        facts.update({
            "CBTBACKUP_SOURCE": result.source, "CBTBACKUP_CHAIN": result.chain or "",
            "CBTBACKUP_BACKUP_ID": result.backup_id or "", "CBTBACKUP_KIND": result.kind or "",
            "CBTBACKUP_STATUS": result.status, "CBTBACKUP_BYTES_READ": str(result.bytes_read),
            "CBTBACKUP_BYTES_STORED": str(result.bytes_stored), "CBTBACKUP_DURATION": f"{result.duration_s:.3f}",
            "CBTBACKUP_ERROR": result.error or "",
        })
    return facts


class _SnapshotHooks:
    """The pipeline's hook: ``before_snapshot`` right before the take, ``after_snapshot`` right after it —
    and, through :meth:`release`, also when the take or the hook before it failed, so nothing stays quiesced."""

    def __init__(self, hooks: Hooks, facts: Callable[[], dict[str, str]], result: SourceResult,
                 warn: Callable[[str], None], cwd: str) -> None:
        self.hooks, self.facts, self.result, self.warn, self.cwd = hooks, facts, result, warn, cwd
        self.reached = self.released = False

    def __call__(self, point: str) -> None:
        if point == "snapshot-taking":
            self.reached = True
            if self.hooks.before_snapshot is not None:
                facts = self.facts()
                outcome = run_hook("before_snapshot", self.hooks.before_snapshot, facts, self.hooks.timeout,
                                   label=f"before_snapshot of {facts['CBTBACKUP_SOURCE']}", cwd=self.cwd)
                if not outcome.ok:
                    raise HookFailedError(outcome.line())
        elif point == "snapshot-taken":
            self.release()

    def release(self) -> None:
        if not self.reached or self.released or self.hooks.after_snapshot is None:
            return
        self.released = True
        facts = self.facts()
        outcome = run_hook("after_snapshot", self.hooks.after_snapshot, facts, self.hooks.timeout,
                           label=f"after_snapshot of {facts['CBTBACKUP_SOURCE']}", cwd=self.cwd)
        if not outcome.ok:  # the snapshot is taken: the backup goes on, but the run is not a success
            self.warn(outcome.line())
            self.result.fail(outcome.line())


class JobRun:
    def __init__(self, job: Job, options: RunOptions) -> None:
        self.job, self.options = job, options
        self.report = JobReport(job.name, this_host(), time.time(), dry_run=options.dry_run)
        self.repo: Repository | None = None

    def hook(self, name: str, command: HookCommand | None, facts: dict[str, str], timeout: float) -> HookOutcome:
        if command is None:
            return HookOutcome(name, True)
        source = facts.get("CBTBACKUP_SOURCE")
        outcome = run_hook(name, command, facts, timeout, label=f"{name} of {source}" if source else f"job {name}",
                           cwd=self.job.folder)
        if not outcome.ok:
            self.options.warn(outcome.line())
        return outcome

    def run(self) -> JobReport:
        job = self.job
        try:
            self.repo = open_job_repository(job.repository)
            self.report.notes.extend(self.repo.notes)
            if job.retention is not None or job.verify is not None:  # refused before any backup, not after
                self.repo.require_full_key("a job with [retention] or [verify]")
        except CbtError as e:
            self.report.error = f"cannot open the repository {job.repository.location}: {e}"
        if self.report.error is None:
            before = self.hook("before", job.hooks.before, _facts(job), job.hooks.timeout)
            if not before.ok:
                self.report.error = f"job {before.line()}"
        if self.report.error is not None:
            self.report.sources = [SourceResult(s.path, s.chain, error=f"not run: {self.report.error}",
                                                started=self.report.started) for s in job.sources]
        else:
            for spec in job.sources:
                self.report.sources.append(self.back_up(spec))
            self.prune()
        self.finish()
        return self.report

    def back_up(self, spec: SourceSpec) -> SourceResult:
        assert self.repo is not None
        job, repo = self.job, self.repo
        result = SourceResult(spec.path, spec.chain, started=time.time(), status="running")
        try:
            result.chain = planned_chain(repo, spec)
        except CbtError as e:
            result.fail(str(e))
            return self.after_source(spec, result)
        before = self.hook("before", spec.hooks.before, _facts(job, result), spec.hooks.timeout)
        if not before.ok:
            result.fail(f"source {before.line()}: not backed up")
            return self.after_source(spec, result)
        snapshot_hooks = _SnapshotHooks(spec.hooks, lambda: _facts(job, result), result, self.options.warn,
                                        job.folder)
        backup = None
        try:
            kind, why = choose_kind(repo, result.chain, job.full, time.time())
            if kind == "full" and repo.list_backups(result.chain):
                result.notes.append(f"full: {why}")
            backup = run_backup(repo, self._backup_options(spec, kind), self.options.progress(),
                                hook=snapshot_hooks)
        except CbtError as e:
            result.fail(str(e))
        except Exception as e:  # a bug in one source's backup must not cost the others theirs
            result.fail(f"internal error: {type(e).__name__}: {e}")
        finally:  # before anything else runs: the database waits for this
            snapshot_hooks.release()
        if backup is None:
            return self.after_source(spec, result)
        m, stats = backup.manifest, backup.manifest.stats
        result.chain, result.backup_id, result.kind, result.method = m.ref.name, m.ref.id, m.kind, m.method
        result.bytes_read, result.bytes_changed = stats.bytes_scanned, stats.bytes_changed
        result.bytes_stored, result.bytes_reused, result.duration_s = stats.bytes_stored, stats.bytes_reused, \
            stats.duration_s
        result.tracking_mismatches = stats.tracking_mismatches
        result.notes += backup.notes
        self.keep_by_rules(result)
        self.check_sample(result)
        return self.after_source(spec, result)

    def _backup_options(self, spec: SourceSpec, kind: Literal["full", "incr"]) -> BackupOptions:
        ceph = CephOptions(spec.ceph_conf or os.environ.get("CEPH_CONF"), spec.ceph_id, spec.keyring)
        return BackupOptions(source=spec.path, kind=kind, name=spec.chain, provider=spec.provider,
                             state_dir=spec.state_dir, freeze=spec.freeze, diff_storage=spec.diff_storage,
                             diff_storage_limit=spec.diff_storage_limit, wait_lock=self.job.repository.wait_lock,
                             qmp=spec.qmp, device=spec.device, ceph=ceph, unchanged_sample=spec.verify_unchanged,
                             since=LAST_FULL if kind == "incr" and self.job.full.differentials else None,
                             keep_base=kind == "full" and self.job.full.differentials)

    def keep_by_rules(self, result: SourceResult) -> None:
        assert self.repo is not None and result.chain is not None
        if self.job.retention is None:
            return
        try:
            forgotten = run_forget(self.repo, ForgetOptions(name=result.chain, policy=self.job.retention.policy,
                                                            wait_lock=self.job.repository.wait_lock))
        except CbtError as e:
            result.fail(f"retention: {e}")
            return
        result.forgotten = len(forgotten.removed)
        if forgotten.removed:
            result.notes.append(f"retention forgot {len(forgotten.removed)} backup(s) of {result.chain}")

    def check_sample(self, result: SourceResult) -> None:
        assert self.repo is not None and result.backup_id is not None
        if self.job.verify is None:
            return
        try:
            checked = run_verify(self.repo, result.backup_id, sample=self.job.verify)
        except CbtError as e:
            result.fail(f"sample check of {result.backup_id}: {e}")
            return
        result.verified_bytes = checked.bytes_checked
        if not checked.ok:
            result.fail(f"sample check of {result.backup_id}: {checked.problem()}")

    def after_source(self, spec: SourceSpec, result: SourceResult) -> SourceResult:
        if result.status == "running":
            result.status = "success"
        if self.repo is not None and result.chain is not None:
            try:
                newest = self.repo.latest(result.chain)
                result.last_success = self.repo.load_manifest(newest).created if newest else None
            except CbtError:
                result.last_success = None
        if result.status == "failure":
            self.hook("on_failure", spec.hooks.on_failure, _facts(self.job, result), spec.hooks.timeout)
        after = self.hook("after", spec.hooks.after, _facts(self.job, result), spec.hooks.timeout)
        if not after.ok:
            result.fail(f"source {after.line()}")
        if result.error:
            named = result.error if spec.path in result.error else f"{spec.path}: {result.error}"
            self.options.warn(f"{named} (backup {result.backup_id} is kept)" if result.backed_up else named)
        return result

    def prune(self) -> None:
        retention = self.job.retention
        if self.repo is None or retention is None or not retention.prune:
            return
        if not any(s.forgotten for s in self.report.sources):
            return  # nothing new to delete: a prune would only list the whole repository
        try:
            pruned = run_prune(self.repo, PruneOptions(wait_lock=self.job.repository.wait_lock))
        except CbtError as e:
            self.report.error = f"prune: {e}"
            self.options.warn(self.report.error)
            return
        self.report.pruned_bytes = pruned.bytes_deleted
        self.report.notes.append(f"prune deleted {pruned.chunks_deleted} chunks ({format_size(pruned.bytes_deleted)})")

    def finish(self) -> None:
        job, report = self.job, self.report
        report.finished = time.time()
        facts = {**_facts(job), "CBTBACKUP_STATUS": report.status,
                 "CBTBACKUP_SOURCES_OK": str(len(report.succeeded)),
                 "CBTBACKUP_SOURCES_FAILED": str(len(report.sources) - len(report.succeeded)),
                 "CBTBACKUP_ERROR": report.error or ""}
        if report.status != "success":
            self.hook("on_failure", job.hooks.on_failure, facts, job.hooks.timeout)
        after = self.hook("after", job.hooks.after, facts, job.hooks.timeout)
        if not after.ok and report.error is None:
            report.error = f"job {after.line()}"
        report.finished = time.time()
        report.notifications_failed = deliver(job.notify, report)
        for line in report.notifications_failed:
            self.options.warn(f"notification failed: {line}")
        metrics_file = self.options.metrics_file or job.metrics_file
        if metrics_file:
            try:
                write_job_metrics(metrics_file, report)
            except CbtError as e:
                report.notes.append(str(e))
                self.options.warn(str(e))


def run_job(job: Job, options: RunOptions | None = None) -> JobReport:
    """Run every source of ``job``; the report says what happened (its exit code included)."""
    return JobRun(job, options or RunOptions()).run()


def plan_job(job: Job) -> list[str]:
    """What ``run`` would do, as lines (``run --dry-run``): nothing is backed up, no hook runs."""
    lines = [f"job {job.name} ({job.file}): repository {job.repository.location}"]
    try:
        repo: Repository | None = open_job_repository(job.repository)
    except CbtError as e:
        repo = None
        lines.append(f"  the repository cannot be opened now: {e}")
    now = time.time()
    hooks = job.hooks
    for name in ("before", "after", "on_failure"):
        if (command := getattr(hooks, name)) is not None:
            lines.append(f"  job hook {name}: {command.text}")
    for spec in job.sources:
        what = f"  source {spec.path} (provider {spec.provider})"
        if repo is not None:
            try:
                chain = planned_chain(repo, spec)
                kind, why = choose_kind(repo, chain, job.full, now)
                what += f": chain {chain}, {kind} ({why})"
            except CbtError as e:
                what += f": cannot be backed up as written: {e}"
        lines.append(what)
        for name in ("before", "before_snapshot", "after_snapshot", "after", "on_failure"):
            if (command := getattr(spec.hooks, name)) is not None:
                lines.append(f"    hook {name}: {command.text}")
    if job.retention is not None:
        rules = {k: v for k, v in dataclasses.asdict(job.retention.policy).items() if v}
        kept = ", ".join(f"keep_{k} {v:g}" if isinstance(v, float) else f"keep_{k} {v}" for k, v in rules.items())
        lines.append(f"  retention: {kept}{', then prune' if job.retention.prune else ''}")
    if job.verify is not None:
        lines.append(f"  check a {job.verify} sample of each new backup's chunks")
    if job.notify.webhook or job.notify.email:
        targets = [t for t in (job.notify.webhook and f"webhook {job.notify.webhook.url}",
                               job.notify.email and f"e-mail to {', '.join(job.notify.email.to)}") if t]
        lines.append(f"  notify on {job.notify.when}: {'; '.join(targets)}")
    if job.metrics_file:
        lines.append(f"  metrics: {job.metrics_file}")
    return lines


__all__ = ["JobRun", "RunOptions", "choose_kind", "plan_job", "run_job", "should_notify"]
