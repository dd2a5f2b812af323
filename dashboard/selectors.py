"""Reads the dashboard needs that belong to no domain app: worker and queue health."""

from __future__ import annotations

import logging

import redis
from django.conf import settings

from embedhub.celery import app

logger = logging.getLogger(__name__)

QUEUES = ("cpu", "gpu")


def workers_ping(*, timeout: float = 0.5) -> dict:
    """Names of workers that answered a broadcast ping within `timeout` seconds."""
    try:
        replies = app.control.inspect(timeout=timeout).ping() or {}
    except Exception as exc:  # broker down: say so instead of failing the page
        logger.warning("worker ping failed: %s", exc)
        return {"ok": False, "workers": [], "error": f"broker unreachable: {exc}"}
    return {"ok": bool(replies), "workers": sorted(replies), "error": ""}


def queue_lengths(*, queues: tuple[str, ...] = QUEUES) -> dict:
    """Messages waiting in each Celery queue (a Redis list named after the queue)."""
    try:
        client = redis.Redis.from_url(
            settings.CELERY_BROKER_URL, socket_timeout=1, socket_connect_timeout=1
        )
        return {"ok": True, "queues": {q: int(client.llen(q)) for q in queues}, "error": ""}
    except Exception as exc:
        logger.warning("queue length read failed: %s", exc)
        return {"ok": False, "queues": {}, "error": f"broker unreachable: {exc}"}


def system_health(*, timeout: float = 0.5) -> dict:
    workers = workers_ping(timeout=timeout)
    queues = queue_lengths()
    return {"workers": workers, "queues": queues}
