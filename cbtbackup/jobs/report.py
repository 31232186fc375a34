"""What a job run did: per source, and as a whole — the one document that the summary lines, the JSON output,
the webhook, the e-mail and the metrics are all made from.

Exit status of ``cbtbackup run`` (docs/fleet.md):
 0   every source backed up (and its retention, sample check and hooks succeeded)
 20  partial: some sources backed up, some failed
 21  none: no source backed up (or the job's ``before`` hook failed, or the repository could not be opened)
 22  every source backed up, but a notification could not be delivered and ``notify.fail_on_error`` is set
A job file that cannot be run exits 2 (usage) before anything runs. 20-22 stay clear of the codes a single
command uses (1-12), so a script can tell "the job ran, partly" from "the command failed".
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from cbtbackup.model.sizes import format_size

EXIT_PARTIAL = 20
EXIT_NONE = 21
EXIT_NOTIFY_FAILED = 22

Status = Literal["running", "success", "failure"]  # running: what snapshot hooks see


@dataclasses.dataclass
class SourceResult:
    source: str
    chain: str | None
    status: Status = "failure"
    backup_id: str | None = None
    kind: str | None = None
    method: str | None = None
    bytes_read: int = 0
    bytes_changed: int = 0
    bytes_stored: int = 0
    bytes_reused: int = 0
    duration_s: float = 0.0
    started: float = 0.0
    error: str | None = None  # the first thing that went wrong, in one line
    notes: list[str] = dataclasses.field(default_factory=list)  # fallbacks, hook and retention lines
    forgotten: int = 0
    verified_bytes: int = 0
    tracking_mismatches: int = 0  # 1: the provider's tracking under-reported (the backup scanned, and is whole)
    last_success: float | None = None  # when the chain's newest backup was made (this run's, or an earlier)

    @property
    def backed_up(self) -> bool:
        return self.backup_id is not None

    def fail(self, message: str) -> None:
        self.status = "failure"
        if self.error is None:
            self.error = message
        else:
            self.notes.append(message)

    def line(self) -> str:
        if self.backup_id is None:
            return f"{self.source}: failed: {self.error}"
        what = (f"{self.source}: backup {self.backup_id} ({self.chain}): {self.kind} by {self.method}, "
                f"{format_size(self.bytes_read)} read, {format_size(self.bytes_stored)} stored "
                f"in {self.duration_s:.1f} s")
        if self.tracking_mismatches:
            what += " (the change tracking under-reported: this backup scanned)"
        return what if self.status == "success" else f"{what}; then failed: {self.error}"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class JobReport:
    job: str
    host: str
    started: float
    finished: float = 0.0
    sources: list[SourceResult] = dataclasses.field(default_factory=list)
    error: str | None = None  # a failure of the job as a whole (its before hook, opening the repository)
    notes: list[str] = dataclasses.field(default_factory=list)
    notifications_failed: list[str] = dataclasses.field(default_factory=list)
    pruned_bytes: int = 0
    dry_run: bool = False

    @property
    def succeeded(self) -> list[SourceResult]:
        return [s for s in self.sources if s.status == "success"]

    @property
    def status(self) -> Literal["success", "partial", "failure"]:
        if self.error is None and self.sources and len(self.succeeded) == len(self.sources):
            return "success"
        return "partial" if self.succeeded else "failure"

    def exit_code(self, fail_on_notify: bool) -> int:
        status = self.status
        if status == "failure":
            return EXIT_NONE
        if status == "partial":
            return EXIT_PARTIAL
        return EXIT_NOTIFY_FAILED if fail_on_notify and self.notifications_failed else 0

    def summary(self) -> str:
        ok, total = len(self.succeeded), len(self.sources)
        tail = f": {self.error}" if self.error else ""
        return f"job {self.job}: {self.status}, {ok} of {total} sources backed up in " \
               f"{self.finished - self.started:.1f} s{tail}"

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job, "host": self.host, "status": self.status, "started": self.started,
            "finished": self.finished, "duration_s": round(self.finished - self.started, 3),
            "error": self.error, "notes": self.notes, "sources": [s.to_json() for s in self.sources],
            "notifications_failed": self.notifications_failed, "pruned_bytes": self.pruned_bytes,
            "dry_run": self.dry_run,
        }
