"""A job's Prometheus textfile, for node_exporter's textfile collector: written whole to a temporary name
beside the target and renamed over it (prometheus-client's ``write_to_textfile``), so the collector never
reads half a file. Name it ``*.prom`` in the collector's directory; one file per job.

Per source (labels ``job``, ``chain``, ``source``): the result of the last run, when it ran, when the chain's
newest backup was made (the last success, read from the repository, so a failed run still shows how old the
last good backup is), and that run's duration and byte counts. Per job: when it ran, and how many sources it
had and how many failed.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cbtbackup.errors import os_error
from cbtbackup.jobs.report import JobReport

_PER_SOURCE: list[tuple[str, str, str]] = [  # metric, help, SourceResult attribute
    ("cbtbackup_backup_duration_seconds", "How long the last run's backup took.", "duration_s"),
    ("cbtbackup_backup_read_bytes", "Bytes the last run read from the source.", "bytes_read"),
    ("cbtbackup_backup_changed_bytes", "Bytes the last run found changed.", "bytes_changed"),
    ("cbtbackup_backup_stored_bytes", "Bytes the last run stored (compressed, new chunks only).", "bytes_stored"),
    ("cbtbackup_backup_deduplicated_bytes", "Changed bytes the last run did not store: the repository held them.",
     "bytes_reused"),
    ("cbtbackup_backup_tracking_mismatch", "1 if the last run caught the source's change tracking under-reporting "
     "(that backup scanned instead, and is whole).", "tracking_mismatches"),
]


class _JobCollector(Collector):
    def __init__(self, report: JobReport) -> None:
        self.report = report

    def collect(self) -> Iterator[Metric]:
        r = self.report
        labels = ["job", "chain", "source"]
        success = GaugeMetricFamily("cbtbackup_backup_success", "1 if the last run backed the source up whole.",
                                    labels=labels)
        last_run = GaugeMetricFamily("cbtbackup_backup_last_run_timestamp_seconds",
                                     "When the last run of this source started.", labels=labels)
        last_ok = GaugeMetricFamily("cbtbackup_backup_last_success_timestamp_seconds",
                                    "When the chain's newest backup was made.", labels=labels)
        figures = [GaugeMetricFamily(name, text, labels=labels) for name, text, _ in _PER_SOURCE]
        for s in r.sources:
            values = [r.job, s.chain or "", s.source]
            success.add_metric(values, 1.0 if s.status == "success" else 0.0)
            last_run.add_metric(values, s.started)
            if s.last_success is not None:
                last_ok.add_metric(values, s.last_success)
            for family, (_, _, attribute) in zip(figures, _PER_SOURCE, strict=True):
                family.add_metric(values, float(getattr(s, attribute)))
        yield from (success, last_run, last_ok, *figures)
        job = GaugeMetricFamily("cbtbackup_job_last_run_timestamp_seconds", "When the job last ran.",
                                labels=["job"])
        job.add_metric([r.job], r.started)
        sources = GaugeMetricFamily("cbtbackup_job_sources", "Sources in the job.", labels=["job"])
        sources.add_metric([r.job], float(len(r.sources)))
        failed = GaugeMetricFamily("cbtbackup_job_sources_failed", "Sources the last run did not back up whole.",
                                   labels=["job"])
        failed.add_metric([r.job], float(len(r.sources) - len(r.succeeded)))
        ok = GaugeMetricFamily("cbtbackup_job_success", "1 if the last run of the job succeeded whole.",
                               labels=["job"])
        ok.add_metric([r.job], 1.0 if r.status == "success" else 0.0)
        yield from (job, sources, failed, ok)


def write_job_metrics(path: str, report: JobReport) -> None:
    registry = CollectorRegistry()
    registry.register(_JobCollector(report))
    try:
        write_to_textfile(path, registry)
    except OSError as e:
        raise os_error(e, f"cannot write the metrics file {path}") from None
