"""Reads the dashboard needs that belong to no domain app: worker and queue health (queue
lengths are the ops app's, shared with /metrics)."""

from __future__ import annotations

import logging

from embedhub.celery import app
from embedhub.ops.selectors import queue_lengths

logger = logging.getLogger(__name__)


def workers_ping(*, timeout: float = 0.5) -> dict:
    """Names of workers that answered a broadcast ping within `timeout` seconds."""
    try:
        replies = app.control.inspect(timeout=timeout).ping() or {}
    except Exception as exc:  # broker down: say so instead of failing the page
        logger.warning("worker ping failed: %s", exc)
        return {"ok": False, "workers": [], "error": f"broker unreachable: {exc}"}
    return {"ok": bool(replies), "workers": sorted(replies), "error": ""}


def system_health(*, timeout: float = 0.5) -> dict:
    workers = workers_ping(timeout=timeout)
    queues = queue_lengths()
    return {"workers": workers, "queues": queues}
