"""Writes on jobs: submit, dispatch, claim, progress/heartbeat, finish, cancel, retry, reap.

Every state change is a single conditional UPDATE, so a duplicate message, a late
heartbeat from a presumed-dead worker or a double click can never move a job twice.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from datetime import timedelta

import redis
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from embedhub.celery import app
from embedhub.core.errors import Conflict
from embedhub.jobs.idempotency import job_for_idempotency_key
from embedhub.jobs.kinds import job_kind_get
from embedhub.jobs.models import Job, JobEvent

logger = logging.getLogger(__name__)

RUN_JOB_TASK = "embedhub.run_job"


BROKER_SCAN_LIMIT = 10_000  # queued messages looked through before assuming ours is there


def _conf(name: str) -> float:
    return settings.EMBEDHUB[name]


def _backoff(base: float, exponent: int) -> timedelta:
    """base × 2^exponent seconds, capped: a retry storm never outgrows the cap."""
    return timedelta(seconds=min(base * 2 ** max(exponent, 0), _conf("BACKOFF_MAX_SECONDS")))


def job_event_add(*, job: Job, kind: str, message: str = "", data: dict | None = None) -> JobEvent:
    return JobEvent.objects.create(job=job, kind=kind, message=message[:10000], data=data or {})


def job_submit(
    *,
    owner,
    kind: str,
    params: dict,
    corpus=None,
    idempotency_key: str | None = None,
    fingerprint: str = "",
    parent: Job | None = None,
) -> tuple[Job, bool]:
    """Create a queued job and send it to its queue once the transaction commits.

    Returns (job, created). The same idempotency key from the same owner returns the
    first job instead of creating a second one, if `fingerprint` (of the request) matches
    the one stored with it (jobs/idempotency.py), else it is refused.
    """
    lookup = {"owner": owner, "idempotency_key": idempotency_key, "fingerprint": fingerprint}
    if idempotency_key and (existing := job_for_idempotency_key(**lookup)):
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
                idempotency_fingerprint=fingerprint if idempotency_key else "",
                parent=parent,
            )
            job_event_add(job=job, kind="submitted", data={"params": params})
    except IntegrityError:
        # Two requests with one key raced; the loser answers with the winner's job (or is
        # refused, when its request differs).
        winner = job_for_idempotency_key(**lookup) if idempotency_key else None
        if winner is None:
            raise
        return winner, False
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
    now = timezone.now()
    # The next re-send, if the message turns out lost, waits twice as long as the last.
    wait = _backoff(_conf("REDISPATCH_AFTER_SECONDS"), job.dispatch_count)
    Job.objects.filter(pk=job.pk).update(
        dispatched_at=now, dispatch_count=F("dispatch_count") + 1, next_dispatch_at=now + wait
    )


def job_claim(*, job_id: int, worker: str) -> Job | None:
    """Atomically move queued -> running with a fresh claim token. None if someone else has
    it, it is finished, or its owner already runs as many jobs as allowed (it then waits)."""
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id, status=Job.Status.QUEUED).first()
        if job is None:
            return None
        reason = _owner_at_limit(job)
        if reason:
            _job_wait(job=job, reason=reason)
            return None
        pid, backend_start = _backend()
        now = timezone.now()
        Job.objects.filter(pk=job.pk).update(
            status=Job.Status.RUNNING,
            worker=worker,
            attempts=F("attempts") + 1,
            heartbeat_at=now,
            started_at=now,
            progressed_at=None,
            progress_note="",  # the lost attempt's last words (a build's share) are stale
            claim_token=uuid.uuid4(),
            claim_backend_pid=pid,
            claim_backend_start=backend_start,
            waiting_reason="",
        )
    job = Job.objects.get(pk=job_id)
    job_event_add(job=job, kind="claimed", message=f"attempt {job.attempts} on {worker}")
    if job.parent_id:
        _shards_note_refresh(parent_id=job.parent_id)
    return job


def _owner_at_limit(job: Job) -> str:
    """Why the job must wait for its owner's other jobs, or "" if it may run now."""
    limit = int(_conf("MAX_RUNNING_PER_USER"))
    if limit <= 0 or job.parent_id:  # a shard runs within its parent's slot
        return ""
    with connection.cursor() as cur:  # one claim per owner at a time: the count stays true
        cur.execute("SELECT pg_advisory_xact_lock(7202, %s)", [job.owner_id])
    running = _running_top_level(owner_id=job.owner_id)
    if running < limit:
        return ""
    return f"waiting: {running} of your jobs are running (at most {limit} at once)"


def _running_top_level(*, owner_id: int) -> int:
    return Job.objects.filter(
        owner_id=owner_id, status=Job.Status.RUNNING, parent__isnull=True
    ).count()


def _job_wait(*, job: Job, reason: str) -> None:
    # The message is consumed: nothing is in flight until one of the owner's jobs ends
    # (_owner_wake) or the reaper sees a free slot.
    Job.objects.filter(pk=job.pk).update(waiting_reason=reason, next_dispatch_at=None)
    if job.waiting_reason != reason:
        job_event_add(job=job, kind="waiting", message=reason)


def _backend() -> tuple[int, object]:
    with connection.cursor() as cur:
        cur.execute("SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()")
        return cur.fetchone()


def _backend_end(job: Job) -> None:
    """End the Postgres session of a claim presumed dead: a frozen (SIGSTOPped) worker then
    holds no lock and no open transaction, and can write nothing when it wakes. The start
    time makes sure a reused pid is never hit."""
    if not job.claim_backend_pid:
        return
    with connection.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE pid = %s AND backend_start = %s AND pid <> pg_backend_pid()",
            [job.claim_backend_pid, job.claim_backend_start],
        )


def _owned(job: Job) -> Q:
    return Q(pk=job.pk, status=Job.Status.RUNNING, claim_token=job.claim_token)


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
    at_least: bool = False,
    advanced: bool = False,
) -> None:
    """Record progress (and a checkpoint) atomically; raise if cancelled or no longer ours.

    `at_least`: never lower the stored count (a sharded job, whose shards also roll their
    progress up into it, may read an older sum than one a shard just wrote). `advanced`:
    work moved on that `done` does not count (an index build's phase or tuples)."""
    fields: dict = {"progress_done": Greatest(F("progress_done"), done) if at_least else done}
    if advanced or done > (job.progress_done or 0) or checkpoint is not None:
        fields["progressed_at"] = timezone.now()  # this attempt is not a stalled one
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


def job_shards_roll_up(*, parent_id: int, unit: str) -> None:
    """The parent's progress becomes the sum of its shards' (never lower: a shard's report
    may be read before another's commit), where the parent counts in the shards' `unit`.

    A parent counting something else (a policy job: steps across candidates and corpora,
    its shards one shadow build's documents) is left alone; it maps the sum onto its own
    count as it waits for its shards (jobs.sharding.job_shards_wait)."""
    total = (
        Job.objects.filter(parent_id=OuterRef("pk"))
        .values("parent_id")
        .annotate(done=Sum("progress_done"))
        .values("done")
    )
    # A queued parent too: its worker was lost, yet its shards go on in other workers.
    active = (Job.Status.RUNNING, Job.Status.QUEUED)
    Job.objects.filter(pk=parent_id, status__in=active, progress_unit=unit).update(
        progress_done=Greatest(F("progress_done"), Coalesce(Subquery(total), 0)),
        progressed_at=timezone.now(),
    )


def shards_note(*, label: str, finished: int, shards: int, running: int) -> str:
    """A sharded parent's progress note: what it is building and where its shards are."""
    return f"{label}: {finished}/{shards} shards done, {running} running"


_SHARDS_NOTE = re.compile(r"(?P<label>.+): \d+/\d+ shards done, \d+ running")


def _shards_note_refresh(*, parent_id: int) -> None:
    """The parent's shard counts as of now, when a shard starts or ends (the only times they
    change). Its own loop writes them between shards, but while its worker runs a shard
    inline nobody else would, and the note would go stale."""
    note = Job.objects.filter(pk=parent_id).values_list("progress_note", flat=True).first()
    match = _SHARDS_NOTE.fullmatch(note or "")
    if match is None:  # the parent is in another phase (an HNSW build, a policy's eval)
        return
    counts = Job.objects.filter(parent_id=parent_id).aggregate(
        shards=Count("pk"),
        finished=Count("pk", filter=Q(status=Job.Status.SUCCEEDED)),
        running=Count("pk", filter=Q(status=Job.Status.RUNNING)),
    )
    fresh = shards_note(label=match["label"], **counts)
    # Only over the note read: a newer one the parent wrote meanwhile wins.
    Job.objects.filter(pk=parent_id, progress_note=note).update(progress_note=fresh)


def _finish(job: Job, status: str, **fields) -> bool:
    now = timezone.now()
    updated = Job.objects.filter(_owned(job)).update(status=status, finished_at=now, **fields)
    if updated:
        _owner_wake(owner_id=job.owner_id)
        if job.parent_id:
            _shards_note_refresh(parent_id=job.parent_id)
    return bool(updated)


def _owner_wake(*, owner_id: int) -> None:
    """A slot of this owner is free: send the oldest of their waiting jobs."""
    waiting = Job.objects.filter(
        owner_id=owner_id, status=Job.Status.QUEUED, cancel_requested=False
    ).exclude(waiting_reason="")
    for job_id in waiting.order_by("created_at").values_list("pk", flat=True)[:1]:
        job_dispatch(job_id=job_id)


def job_succeed(*, job: Job, result: dict) -> None:
    # The note says what a running job is doing ("building HNSW index"): done, it would
    # read as still going. A failed or cancelled job keeps it: where it stopped.
    done = {"result": result, "eta_seconds": 0, "error": "", "progress_note": ""}
    if _finish(job, Job.Status.SUCCEEDED, **done):
        job_event_add(job=job, kind="succeeded", data={"result": result})


def job_fail(*, job: Job, error: str, detail: str = "") -> None:
    """`error` is for the owner; `detail` (a traceback) only for staff and the logs."""
    if _finish(job, Job.Status.FAILED, error=error[:20000], error_detail=detail[:50000]):
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
    _shards_cancel(parent=job, now=now)
    job.refresh_from_db()
    return job


def _shards_cancel(*, parent: Job, now) -> None:
    """Cancel stops every shard: waiting ones at once, running ones at their next report."""
    shards = Job.objects.filter(parent=parent)
    shards.filter(status=Job.Status.QUEUED).update(
        status=Job.Status.CANCELLED, cancel_requested=True, finished_at=now
    )
    shards.filter(status=Job.Status.RUNNING).update(cancel_requested=True)


def job_retry(*, job: Job) -> Job:
    """Re-queue a failed or cancelled job; it resumes from its last checkpoint.

    A top-level job's kind may refuse first (JobKind.before_retry: a reindex while another
    job may swap the same corpus's index); its check and the re-queue share one
    transaction, so a submission waiting on the same locks sees this job queued."""
    retryable = (Job.Status.FAILED, Job.Status.CANCELLED)
    job.refresh_from_db(fields=["status"])
    if job.status not in retryable:  # before the kind's check: its refusal would mislead
        raise Conflict(
            f"only failed or cancelled jobs can be retried; job {job.pk} is {job.status}"
        )
    with transaction.atomic():
        before_retry = job_kind_get(job.kind).before_retry
        if before_retry is not None and job.parent_id is None:  # a shard runs in its parent
            before_retry(job=job)
        updated = Job.objects.filter(pk=job.pk, status__in=retryable).update(
            status=Job.Status.QUEUED,
            cancel_requested=False,
            error="",
            error_detail="",
            finished_at=None,
            # The attempt history stays (attempts, claim tokens in the events); a retry is
            # a fresh chance for the crash policy and the dispatch backoff.
            stalled_attempts=0,
            claim_token=None,
            dispatch_count=0,
            next_dispatch_at=None,
            waiting_reason="",
        )
        if not updated:
            job.refresh_from_db(fields=["status"])
            raise Conflict(
                f"only failed or cancelled jobs can be retried; job {job.pk} is {job.status}"
            )
        job_event_add(job=job, kind="retried", data={"checkpoint": job.checkpoint})
        transaction.on_commit(lambda: job_dispatch(job_id=job.pk))
    job.refresh_from_db()
    return job


def _requeue_stale(now) -> list[int]:
    """Re-queue running jobs whose heartbeat went stale (their worker is gone).

    An attempt that made progress is not held against the job: it fails only after
    MAX_STALLED_ATTEMPTS lost attempts in a row without progress. Each stalled attempt
    doubles the wait before the next one. Returns the jobs to dispatch now.
    """
    stale_before = now - timedelta(seconds=_conf("STALE_AFTER_SECONDS"))
    due = []
    for job in Job.objects.filter(status=Job.Status.RUNNING, heartbeat_at__lt=stale_before):
        stalled = 0 if job.progressed_at is not None else job.stalled_attempts + 1
        # Conditional on the claim and the stale state we read, so a worker that just beat
        # keeps its job.
        still_stale = Job.objects.filter(_owned(job), heartbeat_at__lt=stale_before)
        # Ended first: a frozen worker may hold the job row's lock in an open transaction.
        _backend_end(job)
        if job.cancel_requested:
            # Re-queued, it would wait forever: nothing dispatches a job asked to cancel.
            _job_cancel_lost(job=job, claim=still_stale)
            continue
        if stalled >= _conf("MAX_STALLED_ATTEMPTS"):
            _job_give_up(job=job, stalled=stalled, claim=still_stale)
            continue
        wait = (
            timedelta(0)
            if stalled == 0
            else _backoff(_conf("REQUEUE_BACKOFF_SECONDS"), stalled - 1)
        )
        moved = still_stale.update(
            status=Job.Status.QUEUED,
            worker="",
            claim_token=None,
            stalled_attempts=stalled,
            next_dispatch_at=now + wait,
            dispatch_count=0,
            progress_note=f"re-queued: its worker {job.worker} was lost",
        )
        if moved:
            job_event_add(
                job=job,
                kind="requeued",
                message=f"heartbeat from {job.worker} went stale",
                data={"stalled_attempts": stalled, "dispatch_in_seconds": wait.total_seconds()},
            )
            if not wait:
                due.append(job.pk)
    return due


def _job_cancel_lost(*, job: Job, claim) -> None:
    """A cancel asked of a job whose worker then vanished: the cancel wins."""
    if claim.update(status=Job.Status.CANCELLED, finished_at=timezone.now(), claim_token=None):
        job_event_add(
            job=job, kind="cancelled", message=f"cancelled; its worker {job.worker} was lost"
        )
        _owner_wake(owner_id=job.owner_id)


def _cancelled_while_queued_end(now) -> list[int]:
    """Queued jobs still asked to cancel, which a reaper re-queued before it knew to end them
    (or an older release did): cancelled, so nothing waits on them for ever."""
    stuck = Job.objects.filter(status=Job.Status.QUEUED, cancel_requested=True)
    ended = []
    for job in stuck:
        # Conditional, as a retry may have queued it afresh since it was read.
        if stuck.filter(pk=job.pk).update(status=Job.Status.CANCELLED, finished_at=now):
            job_event_add(job=job, kind="cancelled", message="cancelled while re-queued")
            ended.append(job.pk)
    return ended


def _job_give_up(*, job: Job, stalled: int, claim) -> bool:
    error = (
        f"gave up: the worker was lost in {stalled} attempts in a row without progress "
        f"(of {job.attempts} attempts in all)"
    )
    failed = claim.update(
        status=Job.Status.FAILED, finished_at=timezone.now(), error=error, stalled_attempts=stalled
    )
    if not failed:
        return False
    job_event_add(job=job, kind="failed", message=error)
    _owner_wake(owner_id=job.owner_id)
    return True


def _message_waiting(job: Job) -> bool | None:
    """Whether the job's message still waits in its broker queue. None when it cannot tell
    (another broker, or it is down).

    Messages reserved but not acked are not counted: a live worker (prefetch 1) starts what
    it reserves at once, so a queued job's unacked message belongs to a dead worker, and
    the broker would only hand it out again after the visibility timeout (an hour)."""
    url = settings.CELERY_BROKER_URL
    if not url.startswith(("redis://", "rediss://")):
        return None
    needle = f'"argsrepr": "[{job.pk}]"'.encode()
    try:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        queued = client.lrange(job.queue, 0, BROKER_SCAN_LIMIT - 1)
    except redis.RedisError:
        return None
    if len(queued) >= BROKER_SCAN_LIMIT:
        return True  # a queue this deep: ours is surely still in it
    return any(needle in message for message in queued)


def _redispatch_due(now) -> list[int]:
    """Queued jobs whose message may be lost: sent again only if the broker has no message
    for them (a message waiting behind a long job is left alone, with a longer wait)."""
    due = Job.objects.filter(status=Job.Status.QUEUED, cancel_requested=False, waiting_reason="")
    due = due.filter(Q(next_dispatch_at__lte=now) | Q(next_dispatch_at__isnull=True))
    sent = []
    for job in due:
        if job.dispatched_at is not None and _message_waiting(job):
            wait = _backoff(_conf("REDISPATCH_AFTER_SECONDS"), job.dispatch_count)
            Job.objects.filter(pk=job.pk).update(next_dispatch_at=now + wait)
            continue
        job_dispatch(job_id=job.pk)
        sent.append(job.pk)
    return sent


def _waiting_wake() -> None:
    """A safety net for _owner_wake: owners with a free slot get a waiting job sent."""
    owners = (
        Job.objects.filter(status=Job.Status.QUEUED, cancel_requested=False)
        .exclude(waiting_reason="")
        .values_list("owner_id", flat=True)
        .distinct()
    )
    for owner_id in owners:
        if _running_top_level(owner_id=owner_id) < int(_conf("MAX_RUNNING_PER_USER")):
            _owner_wake(owner_id=owner_id)


REAPER_TASK = "EmbedHub: reap stale jobs"  # the periodic task's name (jobs/migrations/0002)
_last_reaped = float("-inf")  # this process's last jobs_reap_if_due (monotonic seconds)
_reap_clock = threading.Lock()  # a parent job and the shard it runs inline each have a reaper


def reaper_schedule_sync() -> None:
    """At beat's start: the reaper's periodic task exists (recovery depends on it; an admin
    may disable it, not lose it), and a reap message no worker took within one interval
    expires: the next one does the same work, and a pile of them would only delay the jobs
    queued behind it. Its schedule stays what the admin set (the setting's value at first)."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    task = PeriodicTask.objects.filter(name=REAPER_TASK).select_related("interval").first()
    if task is None:
        seconds = max(1, int(_conf("REAPER_INTERVAL_SECONDS")))
        every = IntervalSchedule.objects.filter(every=seconds, period="seconds").first()
        task = PeriodicTask.objects.create(
            name=REAPER_TASK,
            task="embedhub.reap_jobs",
            interval=every or IntervalSchedule.objects.create(every=seconds, period="seconds"),
        )
    if task.interval is not None:  # not on a crontab an admin chose
        seconds = int(task.interval.schedule.run_every.total_seconds())
        PeriodicTask.objects.filter(pk=task.pk).update(expire_seconds=max(1, seconds))


def jobs_reap_if_due() -> dict | None:
    """jobs_reap from a worker running a job, at most once per REAPER_INTERVAL_SECONDS in
    this process (None when not due).

    Beat's periodic reap is a task on the job queue, so it waits for a free worker: with
    every worker busy (a sharded job's parent waiting on a shard whose worker died), no one
    would reap. So every busy worker reaps too. Several reapers at once do no harm: each of
    its steps is an update conditional on the state it read."""
    global _last_reaped
    with _reap_clock:
        clock = time.monotonic()
        if clock - _last_reaped < _conf("REAPER_INTERVAL_SECONDS"):
            return None
        _last_reaped = clock
    return jobs_reap()


def jobs_reap(*, now=None) -> dict:
    """Re-queue running jobs whose worker died and re-send queued jobs whose message was lost."""
    now = now or timezone.now()
    requeued = _requeue_stale(now)
    for job_id in requeued:
        job_dispatch(job_id=job_id)
    cancelled = _cancelled_while_queued_end(now)
    redispatched = _redispatch_due(now)
    _waiting_wake()
    return {"requeued": requeued, "redispatched": redispatched, "cancelled": cancelled}
