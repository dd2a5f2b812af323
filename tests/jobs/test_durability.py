"""Crashes, cancels, broker restarts and duplicate deliveries never lose or repeat work.

Each test runs real `celery worker` processes against the real Postgres and Redis; the
unit of work is an embed job's document, and "exactly once" is checked on the vector
table (one row per document) and on the job's own accounting.
"""

import pytest
from django.db import connection
from django.test import override_settings

from embedhub.celery import app as celery_app
from embedhub.core import embedded
from embedhub.jobs.models import Job
from embedhub.jobs.services import RUN_JOB_TASK, jobs_reap
from embedhub.jobs.submission import job_submit_checked
from embedhub.vectors.models import VectorIndex
from tests.conftest import wait_for_job, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

FAST_REAPER = {
    "STALE_AFTER_SECONDS": 2,
    "REDISPATCH_AFTER_SECONDS": 0,
    "MAX_ATTEMPTS": 5,
    "HEARTBEAT_SECONDS": 0.5,
    "REAPER_INTERVAL_SECONDS": 1,
    "DEFAULT_ENCODER": "",
    "INDEX_RETENTION_DAYS": 7,
}


def _embed(user, corpus, model_version, batch_size=16):
    params = {
        "corpus": corpus.pk,
        "model_version": model_version.pk,
        "encoder": "fake:32",
        "batch_size": batch_size,
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
    with override_settings(EMBEDHUB=FAST_REAPER):
        assert job.pk in jobs_reap()["redispatched"]
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
