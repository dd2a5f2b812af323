"""Reads an operator needs about the whole fleet: jobs, broker queues, throughput,
heartbeats and HNSW build times.

All of it is read when asked, from Postgres (every worker writes its jobs' state there) or
from the broker, so any one web process answers for every worker without sharing memory.
"""

from __future__ import annotations

import logging
from datetime import datetime

import redis
from django.conf import settings
from django.db.models import Count, Q, Sum
from django.utils import timezone

from embedhub.jobs.kinds import QUEUES
from embedhub.jobs.models import Job
from embedhub.vectors.models import VectorIndex

logger = logging.getLogger(__name__)

# Upper bounds (seconds) of the HNSW build-duration histogram: seconds for a sample corpus,
# up to hours for tens of millions of vectors.
HNSW_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0)


def queue_lengths(*, queues: tuple[str, ...] = QUEUES) -> dict:
    """Messages waiting in each Celery queue (a Redis list named after the queue)."""
    try:
        client = redis.Redis.from_url(
            settings.CELERY_BROKER_URL, socket_timeout=1, socket_connect_timeout=1
        )
        return {"ok": True, "queues": {q: int(client.llen(q)) for q in queues}, "error": ""}
    except Exception as exc:  # broker down: reported, not raised, so the caller still answers
        logger.warning("queue length read failed: %s", exc)
        return {"ok": False, "queues": {}, "error": f"broker unreachable: {exc}"}


def job_counts() -> dict[tuple[str, str], int]:
    """Jobs per (kind, status), every combination present (absent ones are 0)."""
    counts = {(kind, status): 0 for kind in Job.Kind.values for status in Job.Status.values}
    rows = Job.objects.order_by().values_list("kind", "status").annotate(n=Count("id"))
    counts.update({(kind, status): n for kind, status, n in rows})
    return counts


def docs_per_second() -> dict[str, float]:
    """Summed embedding rate of the running jobs that count documents, per kind."""
    rows = (
        Job.objects.filter(status=Job.Status.RUNNING, progress_unit="docs")
        .order_by()
        .values_list("kind")
        .annotate(rate=Sum("rate"))
    )
    return {kind: float(rate or 0.0) for kind, rate in rows}


def heartbeat_ages(*, now: datetime | None = None) -> list[dict]:
    """Seconds since the last heartbeat of each running job (its start before the first)."""
    now = now or timezone.now()
    running = Job.objects.filter(status=Job.Status.RUNNING).values(
        "pk", "kind", "worker", "heartbeat_at", "started_at"
    )
    ages = []
    for job in running:
        seen = job["heartbeat_at"] or job["started_at"]
        if seen is not None:
            age = max(0.0, (now - seen).total_seconds())
            ages.append(
                {"job": job["pk"], "kind": job["kind"], "worker": job["worker"], "age": age}
            )
    return ages


def hnsw_build_histogram(*, buckets: tuple[float, ...] = HNSW_BUCKETS) -> dict:
    """Cumulative bucket counts, count and sum of the recorded HNSW build durations, in one
    query however many indexes there are."""
    timed = VectorIndex.objects.filter(hnsw_build_seconds__isnull=False)
    per_bucket = {
        f"le_{i}": Count("pk", filter=Q(hnsw_build_seconds__lte=bound))
        for i, bound in enumerate(buckets)
    }
    row = timed.aggregate(count=Count("pk"), total=Sum("hnsw_build_seconds"), **per_bucket)
    return {
        "buckets": [(bound, row[f"le_{i}"]) for i, bound in enumerate(buckets)],
        "count": row["count"],
        "sum": float(row["total"] or 0.0),
    }
