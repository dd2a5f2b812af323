"""The Prometheus exposition of /metrics, built fresh from the ops selectors on each scrape.

Workers are separate processes (often on other machines), so in-process counters in the web
process would only ever see the web process. Every value here is therefore read from
Postgres or the broker at scrape time, by a custom collector on a registry of its own; the
HNSW build durations are the ones the building worker stored on each index.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from embedhub.ops import selectors


class FleetCollector:
    """Jobs, queues, throughput, heartbeats and HNSW builds of the whole deployment."""

    def collect(self) -> Iterator[Metric]:
        yield _jobs()
        yield from _queues()
        yield _docs_per_second()
        yield from _heartbeats()
        yield _hnsw_builds()


def _jobs() -> Metric:
    family = GaugeMetricFamily(
        "embedhub_jobs", "Jobs by kind and status.", labels=["kind", "status"]
    )
    for (kind, status), count in sorted(selectors.job_counts().items()):
        family.add_metric([kind, status], count)
    return family


def _queues() -> Iterator[Metric]:
    lengths = selectors.queue_lengths()
    up = GaugeMetricFamily("embedhub_broker_up", "1 when the broker answered this scrape.")
    up.add_metric([], 1 if lengths["ok"] else 0)
    yield up
    depth = GaugeMetricFamily(
        "embedhub_queue_depth", "Messages waiting in each Celery queue.", labels=["queue"]
    )
    for queue, length in sorted(lengths["queues"].items()):
        depth.add_metric([queue], length)
    yield depth


def _docs_per_second() -> Metric:
    family = GaugeMetricFamily(
        "embedhub_docs_per_second",
        "Documents embedded per second, summed over the running jobs of each kind.",
        labels=["kind"],
    )
    for kind, rate in sorted(selectors.docs_per_second().items()):
        family.add_metric([kind], rate)
    return family


def _heartbeats() -> Iterator[Metric]:
    ages = selectors.heartbeat_ages()
    per_job = GaugeMetricFamily(
        "embedhub_job_heartbeat_age_seconds",
        "Seconds since each running job's last heartbeat.",
        labels=["job", "kind", "worker"],
    )
    newest: dict[str, float] = {}
    for row in ages:
        per_job.add_metric([str(row["job"]), row["kind"], row["worker"]], row["age"])
        newest[row["worker"]] = min(row["age"], newest.get(row["worker"], row["age"]))
    yield per_job
    per_worker = GaugeMetricFamily(
        "embedhub_worker_heartbeat_age_seconds",
        "Seconds since the newest heartbeat of any job running on each worker.",
        labels=["worker"],
    )
    for worker, age in sorted(newest.items()):
        per_worker.add_metric([worker], age)
    yield per_worker


def _hnsw_builds() -> Metric:
    histogram = selectors.hnsw_build_histogram()
    buckets = [(str(float(le)), count) for le, count in histogram["buckets"]]
    buckets.append(("+Inf", histogram["count"]))
    family = HistogramMetricFamily(
        "embedhub_hnsw_build_seconds", "Duration of each HNSW index build, in seconds."
    )
    family.add_metric([], buckets, sum_value=histogram["sum"])
    return family


def metrics_exposition() -> tuple[bytes, str]:
    """(body, content type) in the Prometheus text format."""
    registry = CollectorRegistry()
    registry.register(FleetCollector())
    return generate_latest(registry), CONTENT_TYPE_LATEST
