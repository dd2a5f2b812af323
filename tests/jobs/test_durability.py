"""Crashes, cancels, broker restarts and duplicate deliveries never lose or repeat work.

Each test runs real `celery worker` processes against the real Postgres and Redis; the
unit of work is an embed job's document, and "exactly once" is checked on the vector
table (one row per document) and on the job's own accounting.
"""

from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from embedhub.celery import app as celery_app
from embedhub.core import embedded
from embedhub.jobs.models import Job
from embedhub.jobs.services import RUN_JOB_TASK, jobs_reap
from embedhub.jobs.submission import job_submit_checked
from embedhub.vectors.models import VectorIndex
from tests.conftest import wait_for_job, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

# Short timings so a test sees the reaper act in seconds; the policy (MAX_STALLED_ATTEMPTS,
# the backoff) stays the shipped one.
FAST_REAPER = {
    **settings.EMBEDHUB,
    "STALE_AFTER_SECONDS": 2,
    "REDISPATCH_AFTER_SECONDS": 0,
    "HEARTBEAT_SECONDS": 0.5,
    "REAPER_INTERVAL_SECONDS": 1,
}


def _embed(user, corpus, model_version, batch_size=16):
    # One job, unsharded: these tests pin the single-job path (test_sharding.py the other).
    params = {
        "corpus": corpus.pk,
        "model_version": model_version.pk,
        "encoder": "fake:32",
        "batch_size": batch_size,
        "shard_size": 0,
    }
    return job_submit_checked(user=user, kind="embed", params=params)[0]


def _vector_rows(job):
    table = VectorIndex.objects.get(pk=job.params["index"]).table_name
    with connection.cursor() as cur:
        cur.execute(f"SELECT count(*), count(DISTINCT document_id) FROM {table}")
        return cur.fetchone()


def _progress(job_id):
    return Job.objects.values_list("status", "progress_done").get(pk=job_id)


def test_killed_worker_job_is_requeued_by_the_reaper_and_finishes_exactly_once(
    user, big_corpus, model_version, start_worker
):
    first = start_worker("doomed")
    job = _embed(user, big_corpus, model_version)
    wait_until(lambda: _progress(job.pk)[1] > 2000, timeout=120, what="job midway")
    first.kill()
    done_before = Job.objects.get(pk=job.pk).progress_done
    assert 0 < done_before < 20000
    start_worker("rescuer")
    with override_settings(EMBEDHUB=FAST_REAPER):
        wait_until(lambda: job.pk in jobs_reap()["requeued"], timeout=30, what="reaper")
    job = wait_for_job(job.pk, timeout=180)
    assert job.status == "succeeded", job.error
    assert job.attempts == 2
    assert _vector_rows(job) == (20000, 20000)
    # The second attempt embedded only what the first had not committed.
    assert job.result["embedded"] + job.result["skipped_unchanged"] == 20000
    assert job.result["skipped_unchanged"] >= done_before
    kinds = list(job.events.values_list("kind", flat=True))
    assert kinds.count("claimed") == 2 and "requeued" in kinds


def test_cancel_stops_a_running_job_between_batches_and_retry_resumes_it(
    api, user, big_corpus, model_version, worker
):
    job = _embed(user, big_corpus, model_version)
    wait_until(lambda: _progress(job.pk)[1] > 1000, timeout=120, what="job midway")
    assert api.post(f"/api/v1/jobs/{job.pk}/cancel/").status_code == 200
    job = wait_for_job(job.pk)
    assert job.status == "cancelled"
    rows_at_cancel = _vector_rows(job)[0]
    assert 0 < rows_at_cancel < 20000
    assert VectorIndex.objects.get(pk=job.params["index"]).state == "building"
    response = api.post(f"/api/v1/jobs/{job.pk}/retry/")
    assert response.status_code == 202
    job = wait_for_job(job.pk, timeout=180)
    assert job.status == "succeeded", job.error
    assert job.result["skipped_unchanged"] == rows_at_cancel
    assert _vector_rows(job) == (20000, 20000)


def test_jobs_waiting_in_redis_survive_a_redis_restart(
    user, model_version, private_broker, start_worker
):
    from tests.factories import CorpusFactory
    from tests.vectors.conftest import make_documents

    jobs = []
    for i in range(3):
        corpus = CorpusFactory(owner=user, name=f"r{i}")
        make_documents(corpus, 50)
        jobs.append(_embed(user, corpus, model_version))
    wait_until(lambda: all(Job.objects.get(pk=j.pk).dispatched_at for j in jobs), what="dispatch")
    embedded.redis_stop(private_broker)  # SIGTERM: Redis writes its append-only file
    embedded.redis_start(private_broker)
    start_worker("after-restart")
    for job in jobs:
        finished = wait_for_job(job.pk)
        assert finished.status == "succeeded", finished.error
        assert _vector_rows(finished) == (50, 50)


def test_jobs_whose_messages_were_lost_with_redis_data_are_redispatched_by_the_reaper(
    user, model_version, private_broker, start_worker
):
    from tests.factories import CorpusFactory
    from tests.vectors.conftest import make_documents

    corpus = CorpusFactory(owner=user, name="lost")
    make_documents(corpus, 50)
    job = _embed(user, corpus, model_version)
    wait_until(lambda: Job.objects.get(pk=job.pk).dispatched_at, what="dispatch")
    embedded.redis_stop(private_broker)
    for leftover in (private_broker / "redis").glob("appendonly*"):
        leftover.unlink()  # the broker's data is gone: the message is lost for good
    embedded.redis_start(private_broker)
    start_worker("after-loss")
    later = timezone.now() + timedelta(minutes=5)  # past the re-dispatch wait
    with override_settings(EMBEDHUB=FAST_REAPER):
        assert job.pk in jobs_reap(now=later)["redispatched"]
    finished = wait_for_job(job.pk)
    assert finished.status == "succeeded", finished.error
    assert _vector_rows(finished) == (50, 50)


def test_the_same_job_delivered_twice_runs_once(user, model_version, worker):
    from tests.factories import CorpusFactory
    from tests.vectors.conftest import make_documents

    corpus = CorpusFactory(owner=user, name="dup")
    make_documents(corpus, 200)
    job = _embed(user, corpus, model_version)
    celery_app.send_task(RUN_JOB_TASK, args=[job.pk], queue="gpu")
    celery_app.send_task(RUN_JOB_TASK, args=[job.pk], queue="gpu")
    job = wait_for_job(job.pk)
    assert job.status == "succeeded"
    wait_until(lambda: "skipped" in worker.log_path.read_text(), what="later deliveries")
    job.refresh_from_db()
    assert job.attempts == 1
    assert list(job.events.values_list("kind", flat=True)).count("claimed") == 1
    assert _vector_rows(job) == (200, 200)


def _vectors_are_exactly_the_documents(job) -> None:
    """One vector per document, each the one the encoder gives for the document's text."""
    from embedhub.corpora.models import Document
    from workers.ml.encoder import FakeEncoder

    table = VectorIndex.objects.get(pk=job.params["index"]).table_name
    with connection.cursor() as cur:
        cur.execute(f"SELECT document_id, embedding::text FROM {table} ORDER BY document_id")
        rows = cur.fetchall()
    texts = dict(Document.objects.filter(corpus=job.corpus).values_list("id", "text"))
    titles = dict(Document.objects.filter(corpus=job.corpus).values_list("id", "title"))
    assert [doc_id for doc_id, _ in rows] == sorted(texts)
    sample = rows[:: max(1, len(rows) // 500)]
    expected = FakeEncoder(dimension=32).encode(
        [f"{titles[d]} {texts[d]}" if titles[d] else texts[d] for d, _ in sample]
    )
    for (_, stored), want in zip(sample, expected, strict=True):
        got = [float(x) for x in stored.strip("[]").split(",")]
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-6


def test_ten_kills_of_a_progressing_job_end_in_success_with_every_vector_exact(
    user, model_version, start_worker
):
    from tests.factories import CorpusFactory
    from tests.vectors.conftest import make_documents

    corpus = CorpusFactory(owner=user, name="spot")
    make_documents(corpus, 60000, words=4)
    job = _embed(user, corpus, model_version, batch_size=8)
    for kill in range(10):
        worker = start_worker(f"spot{kill}")
        before = _progress(job.pk)[1]
        wait_until(lambda b=before: _progress(job.pk)[1] > b + 200, timeout=120, what="progress")
        worker.kill()
        with override_settings(EMBEDHUB=FAST_REAPER):
            wait_until(lambda: job.pk in jobs_reap()["requeued"], timeout=30, what="reaper")
    assert _progress(job.pk)[1] < 60000, "the job finished before the tenth kill"
    start_worker("spot-last")
    job = wait_for_job(job.pk, timeout=300)
    assert job.status == "succeeded", job.error
    assert job.attempts == 11 and job.stalled_attempts == 0
    assert _vector_rows(job) == (60000, 60000)
    _vectors_are_exactly_the_documents(job)


def test_a_frozen_worker_woken_after_its_job_moved_on_writes_nothing(
    user, model_version, start_worker
):
    from tests.factories import CorpusFactory
    from tests.vectors.conftest import make_documents

    corpus = CorpusFactory(owner=user, name="frozen")
    make_documents(corpus, 30000, words=4)
    job = _embed(user, corpus, model_version, batch_size=8)
    frozen = start_worker("frozen")
    wait_until(lambda: _progress(job.pk)[1] > 500, timeout=120, what="first attempt midway")
    frozen.freeze()
    with override_settings(EMBEDHUB=FAST_REAPER):
        wait_until(lambda: job.pk in jobs_reap()["requeued"], timeout=30, what="reaper")
    rescuer = start_worker("rescuer")
    at_thaw = wait_until(lambda: _progress(job.pk)[1] > 2000 and _progress(job.pk)[1], timeout=120)
    frozen.thaw()  # its claim token is stale and its database session was ended
    job = wait_for_job(job.pk, timeout=300)
    assert job.status == "succeeded", job.error
    assert job.worker.startswith("rescuer") and job.attempts == 2
    assert _vector_rows(job) == (30000, 30000)
    _vectors_are_exactly_the_documents(job)
    kinds = list(job.events.values_list("kind", flat=True))
    assert kinds.count("claimed") == 2 and kinds.count("succeeded") == 1
    assert "failed" not in kinds and at_thaw < 30000
    assert rescuer.proc.poll() is None
