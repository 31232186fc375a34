"""``run JOB.toml``: load a job file and run it (cbtbackup/jobs/ does the work)."""

from __future__ import annotations

import click

from cbtbackup.cli.app import emit, json_option, unhurried_sigterm
from cbtbackup.cli.progress_bar import make_progress
from cbtbackup.jobs.job_file import load_job
from cbtbackup.jobs.runner import RunOptions, plan_job, run_job


@click.command()
@click.argument("job_file", metavar="JOB.toml")
@click.option("--dry-run", is_flag=True, help="Print what the job would do; back nothing up, run no hook.")
@click.option("--metrics-file", metavar="FILE",
              help="Write the job's Prometheus textfile here (instead of the job's metrics.file).")
@json_option
def run(job_file: str, dry_run: bool, metrics_file: str | None, as_json: bool) -> None:
    """Run the backup job described in JOB.toml: every source, retention, checks, hooks, notifications,
    metrics (docs/fleet.md). Exits 0 when every source was backed up, 20 when some were, 21 when none."""
    unhurried_sigterm()
    job = load_job(job_file)
    if dry_run:
        lines = plan_job(job)
        emit(as_json, {"job": job.name, "dry_run": True, "plan": lines}, lines)
        return
    report = run_job(job, RunOptions(metrics_file=metrics_file, progress=make_progress))
    code = report.exit_code(job.notify.fail_on_error)
    emit(as_json, {**report.to_json(), "exit_code": code}, [s.line() for s in report.sources] + [report.summary()])
    if code:
        click.echo(f"cbtbackup: error: {report.summary()}", err=True)
        raise click.exceptions.Exit(code)
