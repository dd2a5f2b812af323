"""Running a claimed job: the context a kind's `run` reports through, and a heartbeat
thread so a long forward pass is never mistaken for a dead worker."""

from __future__ import annotations

import logging
import threading
import time
import traceback

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection, transaction

from embedhub.core.errors import ApplicationError
from embedhub.jobs import services
from embedhub.jobs.kinds import job_kind_get
from embedhub.jobs.models import Job

logger = logging.getLogger(__name__)


class JobContext:
    """What a runner sees: its checkpoint, and progress reports that double as cancel points."""

    def __init__(self, job: Job):
        self.job = job
        self._started = time.monotonic()
        self._done_at_start: int | None = None

    @property
    def checkpoint(self) -> dict:
        return self.job.checkpoint or {}

    def progress(
        self,
        done: int,
        *,
        total: int | None = None,
        unit: str | None = None,
        note: str | None = None,
        checkpoint: dict | None = None,
        at_least: bool = False,
        advanced: bool = False,
    ) -> None:
        # Rate counts only this attempt's work, so a resumed job does not report a fake burst.
        if self._done_at_start is None:
            self._done_at_start = done
        elapsed = time.monotonic() - self._started
        rate = (done - self._done_at_start) / elapsed if elapsed > 0 else None
        services.job_progress(
            job=self.job,
            done=done,
            total=total,
            unit=unit,
            note=note,
            checkpoint=checkpoint,
            rate=rate,
            at_least=at_least,
            advanced=advanced,
        )
        # Kept in step with the row: a later report of "the same" progress must not write an
        # older number back.
        self.job.progress_done = done
        if total is not None:
            self.job.progress_total = total
        if unit is not None:
            self.job.progress_unit = unit
        if self.job.parent_id:
            # After the commit: the parent must never count rows that could still roll back.
            parent_id, unit = self.job.parent_id, self.job.progress_unit
            transaction.on_commit(
                lambda: services.job_shards_roll_up(parent_id=parent_id, unit=unit)
            )

    def check_cancel(self) -> None:
        """A cancel point that writes no progress (only the heartbeat)."""
        services.job_check_in(job=self.job)

    def event(self, kind: str, message: str = "", data: dict | None = None) -> None:
        services.job_event_add(job=self.job, kind=kind, message=message, data=data)


class Heartbeat:
    def __init__(self, job: Job):
        self.job = job
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job.pk}", daemon=True)
        # A busy worker reaps for the fleet, as beat's reap task would wait for a free one
        # (services.jobs_reap_if_due). In a thread of its own: a slow reap (Redis down)
        # must never hold back this job's heartbeat.
        self._reaper = threading.Thread(target=self._reap, name=f"reaper-{job.pk}", daemon=True)

    def __enter__(self):
        self._thread.start()
        self._reaper.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)
        self._reaper.join(timeout=1)  # a reap under way ends on its own; the job need not wait

    def _run(self) -> None:
        interval = settings.EMBEDHUB["HEARTBEAT_SECONDS"]
        try:
            while not self._stop.wait(interval):
                try:
                    if not services.job_heartbeat(job=self.job):
                        return
                except Exception:  # a DB blip must not kill the job; the next beat retries
                    logger.exception("heartbeat for job %s failed", self.job.pk)
        finally:
            connection.close()  # this thread's own connection

    def _reap(self) -> None:
        try:
            while not self._stop.wait(settings.EMBEDHUB["REAPER_INTERVAL_SECONDS"]):
                try:
                    services.jobs_reap_if_due()
                except Exception:  # the next interval, or another worker, reaps again
                    logger.exception("reaping from job %s's worker failed", self.job.pk)
        finally:
            connection.close()


def job_execute(*, job_id: int, worker: str) -> str:
    """Claim and run a job. Returns the outcome; a duplicate delivery returns "skipped"."""
    close_old_connections()
    return job_claim_and_run(job_id=job_id, worker=worker)


def job_claim_and_run(*, job_id: int, worker: str) -> str:
    """job_execute on the caller's connection: a sharded job runs its shards in its own
    worker this way, keeping the session (and the advisory locks) it holds."""
    job = services.job_claim(job_id=job_id, worker=worker)
    if job is None:
        return "skipped"
    ctx = JobContext(job)
    try:
        with Heartbeat(job):
            result = job_kind_get(job.kind).run(job=job, ctx=ctx)
    except services.JobCancelled:
        services.job_mark_cancelled(job=job)
        return "cancelled"
    except services.JobLost:
        logger.warning("job %s was taken over by another worker; stopping", job.pk)
        return "lost"
    except Exception as exc:
        logger.exception("job %s failed", job.pk)
        error, detail = _describe(exc)
        _fail_recorded(job=job, error=error, detail=detail)
        return "failed"
    services.job_succeed(job=job, result=result or {})
    return "succeeded"


def _fail_recorded(*, job: Job, error: str, detail: str) -> None:
    """job_fail, on a fresh session when the job's own is gone: a worker woken from a freeze
    finds its session ended by the reaper. The write is conditional on this attempt's claim,
    so it then changes nothing, and the worker goes on to its next task."""
    try:
        services.job_fail(job=job, error=error, detail=detail)
    except DatabaseError:
        if connection.is_usable():  # a session that still works failed for another reason
            raise
        connection.close()
        services.job_fail(job=job, error=error, detail=detail)


def _describe(exc: Exception) -> tuple[str, str]:
    """(what the owner reads, the traceback for staff and the logs). A user-facing error
    (bad input) carries its own message; anything else is named by its type."""
    # Notes a kind added on the way out (what its failure left behind) end the message.
    notes = "".join(f"; {note}" for note in getattr(exc, "__notes__", ()))
    if isinstance(exc, ApplicationError):
        return exc.message + notes, ""
    return f"{type(exc).__name__}: {exc}{notes}", traceback.format_exc()
