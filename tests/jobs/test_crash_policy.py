"""The crash policy for preemptible workers, step by step in one process: claim tokens,
attempts with and without progress, backoff, re-dispatch only of lost messages, and the
per-user limit on running jobs. Real Postgres and Redis; no worker process is needed,
because the reaper and the claim are called directly as a worker would."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.test import override_settings
from django.utils import timezone

from embedhub.jobs.models import Job
from embedhub.jobs.runner import JobContext
from embedhub.jobs.services import (
    JobLost,
    job_claim,
    job_fail,
    job_retry,
    job_succeed,
    jobs_reap,
)
from embedhub.jobs.submission import job_submit_checked
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
