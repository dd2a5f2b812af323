"""Writes on jobs: submit, dispatch, claim, progress/heartbeat, finish, cancel, retry, reap.

Every state change is a single conditional UPDATE, so a duplicate message, a late
heartbeat from a presumed-dead worker or a double click can never move a job twice.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from embedhub.celery import app
from embedhub.core.errors import Conflict
from embedhub.jobs.kinds import job_kind_get
from embedhub.jobs.models import Job, JobEvent

logger = logging.getLogger(__name__)

RUN_JOB_TASK = "embedhub.run_job"


def _conf(name: str) -> float:
    return settings.EMBEDHUB[name]


def job_event_add(*, job: Job, kind: str, message: str = "", data: dict | None = None) -> JobEvent:
    return JobEvent.objects.create(job=job, kind=kind, message=message[:10000], data=data or {})


def job_submit(
    *,
    owner,
    kind: str,
    params: dict,
    corpus=None,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Create a queued job and send it to its queue once the transaction commits.

    Returns (job, created). The same idempotency key from the same owner returns the
    first job instead of creating a second one.
    """
    if idempotency_key:
        existing = Job.objects.filter(owner=owner, idempotency_key=idempotency_key).first()
        if existing:
            return existing, False
    try:
        with transaction.atomic():
            job = Job.objects.create(
                owner=owner,
                kind=kind,
                params=params,
                corpus=corpus,
                queue=job_kind_get(kind).queue,
                idempotency_key=idempotency_key or None,
            )
            job_event_add(job=job, kind="submitted", data={"params": params})
    except IntegrityError:
        # Two requests with one key raced; the loser answers with the winner's job.
        return Job.objects.get(owner=owner, idempotency_key=idempotency_key), False
    transaction.on_commit(lambda: job_dispatch(job_id=job.pk))
    return job, True


def job_dispatch(*, job_id: int) -> None:
    """Tell the broker the job is ready. Safe to repeat: claiming is atomic."""
    job = Job.objects.filter(pk=job_id, status=Job.Status.QUEUED).first()
    if job is None:
        return
    try:
        app.send_task(RUN_JOB_TASK, args=[job.pk], queue=job.queue)
    except Exception as exc:  # broker down: the reaper dispatches it again later
        logger.warning("could not dispatch job %s: %s", job.pk, exc)
        job_event_add(job=job, kind="dispatch_failed", message=str(exc))
        return
    Job.objects.filter(pk=job.pk).update(dispatched_at=timezone.now())


def job_claim(*, job_id: int, worker: str) -> Job | None:
    """Atomically move queued -> running. None if someone else has it or it is finished."""
    now = timezone.now()
    claimed = Job.objects.filter(pk=job_id, status=Job.Status.QUEUED).update(
        status=Job.Status.RUNNING,
        worker=worker,
        attempts=F("attempts") + 1,
        heartbeat_at=now,
        started_at=now,
    )
    if not claimed:
        return None
    job = Job.objects.get(pk=job_id)
    job_event_add(job=job, kind="claimed", message=f"attempt {job.attempts} on {worker}")
    return job


def _owned(job: Job) -> Q:
    return Q(pk=job.pk, status=Job.Status.RUNNING, worker=job.worker, attempts=job.attempts)


def job_heartbeat(*, job: Job) -> bool:
    """Refresh the heartbeat; False if this worker no longer owns the job (it was reaped)."""
    return bool(Job.objects.filter(_owned(job)).update(heartbeat_at=timezone.now()))


class JobLost(Exception):
    """This worker's claim was taken away (reaped as stale): stop without writing results."""


class JobCancelled(Exception):
    """A user asked to cancel; raised between units of work."""


def job_progress(
    *,
    job: Job,
    done: int,
    total: int | None = None,
    unit: str | None = None,
    note: str | None = None,
    checkpoint: dict | None = None,
    rate: float | None = None,
) -> None:
    """Record progress (and a checkpoint) atomically; raise if cancelled or no longer ours."""
    fields: dict = {"progress_done": done}
    if total is not None:
        fields["progress_total"] = total
    if unit is not None:
        fields["progress_unit"] = unit
    if note is not None:
        fields["progress_note"] = note[:300]
    if checkpoint is not None:
        fields["checkpoint"] = checkpoint
        job.checkpoint = checkpoint
    if rate is not None:
        fields["rate"] = rate
        remaining = (total if total is not None else job.progress_total or 0) - done
        fields["eta_seconds"] = remaining / rate if rate > 0 and remaining >= 0 else None
    job_check_in(job=job, **fields)


def job_check_in(*, job: Job, **fields) -> None:
    """Heartbeat plus `fields`, only while this claim owns the job; then honour a cancel."""
    if not Job.objects.filter(_owned(job)).update(heartbeat_at=timezone.now(), **fields):
        raise JobLost(f"job {job.pk} is no longer owned by {job.worker}")
    if Job.objects.filter(pk=job.pk, cancel_requested=True).exists():
        raise JobCancelled()


def _finish(job: Job, status: str, **fields) -> bool:
    now = timezone.now()
    updated = Job.objects.filter(_owned(job)).update(status=status, finished_at=now, **fields)
    return bool(updated)


def job_succeed(*, job: Job, result: dict) -> None:
    if _finish(job, Job.Status.SUCCEEDED, result=result, eta_seconds=0, error=""):
        job_event_add(job=job, kind="succeeded", data={"result": result})


def job_fail(*, job: Job, error: str) -> None:
    if _finish(job, Job.Status.FAILED, error=error[:20000]):
        job_event_add(job=job, kind="failed", message=error)


def job_mark_cancelled(*, job: Job) -> None:
    if _finish(job, Job.Status.CANCELLED):
        job_event_add(job=job, kind="cancelled", message="stopped between units of work")


def job_cancel(*, job: Job) -> Job:
    """Queued jobs stop at once; running ones at their next progress report."""
    if job.status in Job.TERMINAL:
        raise Conflict(f"job {job.pk} is already {job.status}", code="job_finished")
    now = timezone.now()
    stopped = Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(
        status=Job.Status.CANCELLED, cancel_requested=True, finished_at=now
    )
    if stopped:
        job_event_add(job=job, kind="cancelled", message="cancelled before it started")
    else:
        Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(cancel_requested=True)
        job_event_add(job=job, kind="cancel_requested")
    job.refresh_from_db()
    return job


def job_retry(*, job: Job) -> Job:
    """Re-queue a failed or cancelled job; it resumes from its last checkpoint."""
    updated = Job.objects.filter(
        pk=job.pk, status__in=[Job.Status.FAILED, Job.Status.CANCELLED]
    ).update(
        status=Job.Status.QUEUED,
        cancel_requested=False,
        error="",
        finished_at=None,
        attempts=0,
    )
    if not updated:
        raise Conflict(
            f"only failed or cancelled jobs can be retried; job {job.pk} is {job.status}"
        )
    job_event_add(job=job, kind="retried", data={"checkpoint": job.checkpoint})
    transaction.on_commit(lambda: job_dispatch(job_id=job.pk))
    job.refresh_from_db()
    return job


def _requeue_stale(now) -> list[int]:
    stale_before = now - timedelta(seconds=_conf("STALE_AFTER_SECONDS"))
    requeued = []
    stale = Job.objects.filter(status=Job.Status.RUNNING, heartbeat_at__lt=stale_before)
    for job in stale:
        if job.attempts >= _conf("MAX_ATTEMPTS"):
            if _finish(job, Job.Status.FAILED, error=f"gave up after {job.attempts} attempts"):
                job_event_add(job=job, kind="failed", message="heartbeat lost too many times")
            continue
        # Conditional on the stale state we read, so a worker that just beat keeps its job.
        moved = Job.objects.filter(_owned(job), heartbeat_at__lt=stale_before).update(
            status=Job.Status.QUEUED, worker=""
        )
        if moved:
            job_event_add(
                job=job, kind="requeued", message=f"heartbeat from {job.worker} went stale"
            )
            requeued.append(job.pk)
    return requeued


def jobs_reap(*, now=None) -> dict:
    """Re-queue running jobs whose worker died and re-send queued jobs whose message was lost."""
    now = now or timezone.now()
    requeued = _requeue_stale(now)
    lost_before = now - timedelta(seconds=_conf("REDISPATCH_AFTER_SECONDS"))
    resend = list(
        Job.objects.filter(status=Job.Status.QUEUED, cancel_requested=False)
        .filter(Q(dispatched_at__lt=lost_before) | Q(dispatched_at__isnull=True))
        .values_list("pk", flat=True)
    )
    for job_id in set(requeued) | set(resend):
        job_dispatch(job_id=job_id)
    return {"requeued": requeued, "redispatched": resend}
