"""The crash policy for preemptible workers, step by step in one process: claim tokens,
attempts with and without progress, backoff, re-dispatch only of lost messages, and the
per-user limit on running jobs. Real Postgres and Redis; no worker process is needed,
because the reaper and the claim are called directly as a worker would."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
import redis
from django.conf import settings
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from embedhub.jobs import services
from embedhub.jobs.models import Job
from embedhub.jobs.runner import Heartbeat, JobContext
from embedhub.jobs.services import (
    JobLost,
    job_cancel,
    job_claim,
    job_fail,
    job_retry,
    job_succeed,
    jobs_reap,
)
from embedhub.jobs.submission import job_submit_checked
from tests.conftest import wait_until
from tests.evaluation.conftest import add_documents, numbered_texts
from tests.factories import CorpusFactory, ModelVersionFactory

pytestmark = pytest.mark.django_db(transaction=True)

POLICY = {**settings.EMBEDHUB, "STALE_AFTER_SECONDS": 60, "REDISPATCH_AFTER_SECONDS": 120}


@pytest.fixture
def embed_job(user):
    def make(owner=None):
        owner = owner or user
        corpus = CorpusFactory(owner=owner)
        add_documents(corpus, numbered_texts(5))
        params = {"corpus": corpus.pk, "encoder": "fake:8", "model_version": version.pk}
        return job_submit_checked(user=owner, kind="embed", params=params)[0]

    version = ModelVersionFactory()
    return make


def _queue(job: Job) -> list[bytes]:
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    return [m for m in client.lrange(job.queue, 0, -1) if f'"[{job.pk}]"'.encode() in m]


def _take(job: Job, worker: str) -> Job | None:
    """What a worker does with the job's message: take it off the queue, then claim."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    for message in _queue(job):
        client.lrem(job.queue, 0, message)
    return job_claim(job_id=job.pk, worker=worker)


def _go_stale(job: Job) -> None:
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))


def _another_session() -> psycopg.Connection:
    settings_dict = connection.settings_dict
    return psycopg.connect(
        dbname=settings_dict["NAME"],
        user=settings_dict["USER"],
        password=settings_dict["PASSWORD"],
        host=settings_dict["HOST"],
        port=settings_dict["PORT"],
        autocommit=True,
    )


def _reap(now=None) -> dict:
    with override_settings(EMBEDHUB=POLICY):
        return jobs_reap(now=now)


def test_every_claim_mints_a_new_token_and_an_old_claim_cannot_write(embed_job):
    job = embed_job()
    first = _take(job, "a")
    _go_stale(first)
    assert job.pk in _reap()["requeued"] or Job.objects.get(pk=job.pk).status == "queued"
    second = _take(job, "b")
    assert second.claim_token != first.claim_token and second.attempts == 2
    with pytest.raises(JobLost):
        JobContext(first).progress(3, total=5)  # same worker name scheme, stale token
    JobContext(second).progress(3, total=5)
    assert Job.objects.get(pk=job.pk).progress_done == 3


def test_attempts_that_progressed_never_count_against_the_job(embed_job):
    job = embed_job()
    for attempt in range(8):
        claim = _take(job, f"w{attempt}")
        assert claim is not None, f"attempt {attempt} was not dispatched again"
        JobContext(claim).progress(attempt + 1, total=100)
        _go_stale(claim)
        assert job.pk in _reap()["requeued"]  # dispatched again at once
    job.refresh_from_db()
    assert job.status == "queued" and job.stalled_attempts == 0 and job.attempts == 8


def test_attempts_without_progress_back_off_then_fail_the_job(embed_job):
    job = embed_job()
    now = timezone.now()
    waits = []
    for attempt in range(3):
        claim = _take(job, f"w{attempt}")
        assert claim is not None
        _go_stale(claim)
        reaped = _reap(now=now)
        job.refresh_from_db()
        if job.status == "failed":
            break
        assert job.pk not in reaped["requeued"]  # a stalled attempt waits first
        waits.append((job.next_dispatch_at - now).total_seconds())
        now = job.next_dispatch_at + timedelta(seconds=1)
        assert job.pk in _reap(now=now)["redispatched"]
    assert waits == [30.0, 60.0]  # REQUEUE_BACKOFF_SECONDS × 2^(stalled - 1)
    assert job.status == "failed" and job.stalled_attempts == 3
    assert "3 attempts in a row without progress" in job.error


def test_an_attempt_whose_index_build_moved_on_is_not_a_stalled_one(embed_job):
    job = embed_job()
    claimed = _take(job, "a")
    # The documents were all done by an earlier attempt; this one got into the HNSW build.
    Job.objects.filter(pk=job.pk).update(progress_done=5, progress_total=5)
    claimed.progress_done = 5
    JobContext(claimed).progress(5, note="building HNSW index: loading tuples", advanced=True)
    _go_stale(claimed)
    _reap()
    job.refresh_from_db()
    assert job.status == "queued" and job.stalled_attempts == 0 and job.next_dispatch_at
    assert job.progress_note == "re-queued: its worker a was lost"  # not the build's old share
    assert _take(job, "b").progress_note == ""


def test_one_attempt_with_progress_resets_the_stalled_count(embed_job):
    job = embed_job()
    now = timezone.now()
    for attempt, progress in enumerate([False, False, True, False, False]):
        claim = _take(job, f"w{attempt}")
        if progress:
            JobContext(claim).progress(10 + attempt, total=100)
        _go_stale(claim)
        _reap(now=now)
        job.refresh_from_db()
        now = (job.next_dispatch_at or now) + timedelta(seconds=1)
        _reap(now=now)
    assert job.status == "queued" and job.stalled_attempts == 2


def test_a_cancel_asked_of_a_job_whose_worker_then_died_ends_it_cancelled(embed_job):
    job = embed_job()
    claimed = _take(job, "a")  # dies before its first progress report
    job_cancel(job=claimed)
    _go_stale(claimed)
    reaped = _reap()
    job.refresh_from_db()
    assert job.status == "cancelled" and job.finished_at is not None
    assert job.pk not in reaped["requeued"] and job.pk not in reaped["cancelled"]
    assert not job.events.filter(kind="requeued").exists()  # ended, not re-queued first
    assert job.events.get(kind="cancelled").message == "cancelled; its worker a was lost"


def test_a_job_left_queued_with_a_cancel_asked_is_ended_by_the_reaper(embed_job):
    # As an older reaper left them: re-queued with the cancel flag, never dispatched again.
    job = embed_job()
    Job.objects.filter(pk=job.pk).update(cancel_requested=True)
    assert job.pk in _reap()["cancelled"]
    job.refresh_from_db()
    assert job.status == "cancelled"
    job_retry(job=job)  # and a retry still gives it a fresh start
    assert Job.objects.get(pk=job.pk).status == "queued"


def test_a_busy_workers_heartbeat_reaps_a_dead_workers_job(embed_job, monkeypatch):
    # Beat's reap task waits for a free worker; a worker busy with a job reaps for the fleet.
    monkeypatch.setattr(services, "_last_reaped", float("-inf"))
    dead, busy = embed_job(), embed_job()
    _go_stale(_take(dead, "dead"))
    # The dead claim was made on this test's session, which the reaper would end as its own.
    Job.objects.filter(pk=dead.pk).update(claim_backend_pid=None)
    running = _take(busy, "busy")
    fast = {**POLICY, "HEARTBEAT_SECONDS": 0.2, "REAPER_INTERVAL_SECONDS": 0.2}
    with override_settings(EMBEDHUB=fast), Heartbeat(running):
        wait_until(
            lambda: Job.objects.get(pk=dead.pk).status == "queued", timeout=20, what="reaped"
        )
    assert Job.objects.get(pk=busy.pk).status == "running"  # its own job is untouched


def test_a_worker_process_reaps_at_most_once_an_interval(monkeypatch):
    monkeypatch.setattr(services, "_last_reaped", float("-inf"))
    with override_settings(EMBEDHUB={**POLICY, "REAPER_INTERVAL_SECONDS": 3600}):
        assert services.jobs_reap_if_due() is not None
        assert services.jobs_reap_if_due() is None  # not due again in this process


def test_retry_keeps_the_attempt_history(embed_job):
    job = embed_job()
    claim = _take(job, "a")
    job_fail(job=claim, error="boom", detail="Traceback ...")
    job = job_retry(job=Job.objects.get(pk=job.pk))
    assert job.attempts == 1 and job.claim_token is None and job.error_detail == ""
    assert _take(job, "b").attempts == 2


def test_the_reaper_resends_a_queued_job_only_when_its_message_is_lost(embed_job):
    job = embed_job()  # no worker runs: its message waits in the queue
    job.refresh_from_db()
    assert len(_queue(job)) == 1 and job.dispatch_count == 1
    later = job.next_dispatch_at + timedelta(seconds=1)
    for _ in range(5):  # a message waiting behind a long job is left alone
        assert job.pk not in _reap(now=later)["redispatched"]
        later += timedelta(hours=3)
    job.refresh_from_db()
    assert len(_queue(job)) == 1 and job.dispatch_count == 1
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    for message in _queue(job):
        client.lrem(job.queue, 0, message)  # the broker lost it
    assert job.pk in _reap(now=later)["redispatched"]
    job.refresh_from_db()
    assert len(_queue(job)) == 1 and job.dispatch_count == 2
    waited = (job.next_dispatch_at - timezone.now()).total_seconds()
    assert waited > POLICY["REDISPATCH_AFTER_SECONDS"] * 1.5  # the next wait doubled


def test_a_users_jobs_beyond_the_limit_wait_with_the_reason_shown(user, other_user, embed_job):
    jobs = [embed_job() for _ in range(3)]
    theirs = embed_job(other_user)
    with override_settings(EMBEDHUB={**POLICY, "MAX_RUNNING_PER_USER": 2}):
        running = [_take(j, f"w{i}") for i, j in enumerate(jobs[:2])]
        assert all(running)
        assert job_claim(job_id=jobs[2].pk, worker="w2") is None
        assert _take(theirs, "w3") is not None  # another user's slots
        waiting = Job.objects.get(pk=jobs[2].pk)
        assert waiting.status == "queued"
        assert waiting.waiting_reason.startswith("waiting: 2 of your jobs are running")
        sends = waiting.dispatch_count
        job_succeed(job=running[0], result={})
        woken = Job.objects.get(pk=jobs[2].pk)
        assert woken.dispatch_count == sends + 1  # sent again as soon as a slot freed
        assert job_claim(job_id=jobs[2].pk, worker="w4") is not None


def test_beat_brings_back_a_deleted_reaper_and_lets_untaken_reaps_expire():
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    PeriodicTask.objects.filter(name=services.REAPER_TASK).delete()
    with override_settings(EMBEDHUB={**POLICY, "REAPER_INTERVAL_SECONDS": 7}):
        services.reaper_schedule_sync()
    task = PeriodicTask.objects.get(name=services.REAPER_TASK)
    assert (task.interval.every, task.interval.period, task.expire_seconds) == (7, "seconds", 7)
    # An interval the admin set stays; its messages expire after it.
    task.interval = IntervalSchedule.objects.create(every=2, period="minutes")
    task.save()
    services.reaper_schedule_sync()
    task.refresh_from_db()
    assert (task.interval.every, task.expire_seconds) == (2, 120)


def test_a_worker_whose_session_the_reaper_ended_records_nothing_and_raises_nothing(
    embed_job, monkeypatch
):
    # A worker frozen past the lease wakes with its session ended by the reaper: its
    # failure write goes through a fresh session, changes nothing, and the task returns.
    import dataclasses

    from embedhub.jobs import kinds, runner

    job = embed_job()

    def run_then_wake_reaped(*, job, ctx):
        Job.objects.filter(pk=job.pk).update(claim_token=None, status="queued")  # reaped
        with _another_session() as other:
            other.execute(
                "SELECT pg_terminate_backend(%s)", [connection.connection.info.backend_pid]
            )
        Job.objects.count()  # the next statement on the ended session
        raise AssertionError("unreachable")

    embed = kinds.job_kind_get("embed")
    monkeypatch.setitem(kinds._KINDS, "embed", dataclasses.replace(embed, run=run_then_wake_reaped))
    assert runner.job_claim_and_run(job_id=job.pk, worker="frozen") == "failed"
    job.refresh_from_db()
    assert job.status == "queued" and not job.error  # the reaper's state, untouched
