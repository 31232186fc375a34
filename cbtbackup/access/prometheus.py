"""The repository as Prometheus metrics (``cbtbackup stats --prometheus``, and ``/metrics`` of the status
page): per chain its backups, logical and stored bytes, deduplication ratio and newest backup's time; for the
repository its chunks and stored bytes. Made from the same library calls as ``stats`` and ``list``."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cbtbackup.pipeline.stats import StatsResult


class _StatsCollector(Collector):
    def __init__(self, stats: StatsResult) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        families = {
            "backups": GaugeMetricFamily("cbtbackup_chain_backups", "Backups in the chain.", labels=["chain"]),
            "logical": GaugeMetricFamily("cbtbackup_chain_logical_bytes", "Sum of the chain's backups' image sizes.",
                                         labels=["chain"]),
            "stored": GaugeMetricFamily("cbtbackup_chain_stored_bytes", "Stored bytes of the chunks the chain uses.",
                                        labels=["chain"]),
            "ratio": GaugeMetricFamily("cbtbackup_chain_dedup_ratio", "Logical bytes over stored bytes.",
                                       labels=["chain"]),
            "newest": GaugeMetricFamily("cbtbackup_chain_last_backup_timestamp_seconds",
                                        "When the chain's newest backup was made.", labels=["chain"]),
        }
        for chain in self.stats.chains:
            families["backups"].add_metric([chain.name], float(chain.backups))
            families["logical"].add_metric([chain.name], float(chain.logical_bytes))
            families["stored"].add_metric([chain.name], float(chain.stored_bytes))
            families["ratio"].add_metric([chain.name], chain.dedup_ratio)
            if chain.newest:
                families["newest"].add_metric([chain.name], chain.newest)
        yield from families.values()
        yield GaugeMetricFamily("cbtbackup_repository_chunks", "Chunk objects stored.", value=self.stats.chunks)
        yield GaugeMetricFamily("cbtbackup_repository_stored_bytes", "Stored bytes of every chunk in use.",
                                value=self.stats.total.stored_bytes)
        yield GaugeMetricFamily("cbtbackup_repository_unreadable_manifests", "Backups whose manifest cannot be read.",
                                value=len(self.stats.unreadable))


def stats_exposition(stats: StatsResult) -> bytes:
    """Prometheus' text format of ``stats``."""
    registry = CollectorRegistry()
    registry.register(_StatsCollector(stats))
    return generate_latest(registry)
