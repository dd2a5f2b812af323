"""/metrics: what a Prometheus scrape sees, read from Postgres and Redis at scrape time, and
who may scrape it."""

from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from embedhub.jobs.models import Job
from embedhub.jobs.submission import job_submit_checked
from embedhub.vectors.models import VectorIndex
from tests.conftest import wait_for_job, wait_until
from tests.vectors.conftest import make_documents


def _scrape(client: Client) -> dict:
    """{(sample name, frozenset of labels): value} of one scrape."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    text = response.content.decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return {"text": text, "samples": samples}


def _value(scrape: dict, name: str, **labels) -> float:
    return scrape["samples"][(name, frozenset(labels.items()))]


@pytest.fixture
def staff_client(staff_user) -> Client:
    client = Client()
    client.force_login(staff_user)
    return client


@pytest.fixture
def empty_queues():
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete("cpu", "gpu")  # this test process's own Redis db
    yield broker
    broker.delete("cpu", "gpu")


@pytest.mark.django_db(transaction=True)  # the job's message is sent on commit
def test_scrape_counts_jobs_by_kind_and_status_and_the_queued_message(
    staff_client, user, corpus, model_version, empty_queues
):
    make_documents(corpus, 3)
    params = {"corpus": corpus.pk, "model_version": model_version.pk, "encoder": "fake:8"}
    job_submit_checked(user=user, kind="embed", params=params)
    Job.objects.create(owner=user, kind="evaluate", status="failed")

    scrape = _scrape(staff_client)
    assert 'embedhub_jobs{kind="embed",status="queued"} 1.0' in scrape["text"]
    assert _value(scrape, "embedhub_jobs", kind="evaluate", status="failed") == 1
    assert _value(scrape, "embedhub_jobs", kind="embed", status="running") == 0
    assert _value(scrape, "embedhub_queue_depth", queue="gpu") == 1
    assert _value(scrape, "embedhub_queue_depth", queue="cpu") == 0
    assert _value(scrape, "embedhub_broker_up") == 1
    assert _value(scrape, "embedhub_hnsw_build_seconds_count") == 0


@pytest.mark.worker
def test_scrape_while_an_embed_job_runs_shows_its_rate_and_heartbeat_then_its_hnsw_build(
    staff_client, user, corpus, model_version, worker
):
    make_documents(corpus, 2500, words=4)
    params = {"corpus": corpus.pk, "model_version": model_version.pk, "encoder": "fake:64"}
    params["batch_size"] = 4  # many small batches: the job runs long enough to be scraped
    job = job_submit_checked(user=user, kind="embed", params=params)[0]
    wait_until(
        lambda: Job.objects.filter(pk=job.pk, status="running", rate__gt=0).exists(),
        timeout=60,
        interval=0.05,
        what="the embed job running with a rate",
    )
    # Hundreds of batches are still to go, so the job is still running during the scrape.
    running = Job.objects.get(pk=job.pk)
    scrape = _scrape(staff_client)
    assert _value(scrape, "embedhub_jobs", kind="embed", status="running") == 1
    assert _value(scrape, "embedhub_docs_per_second", kind="embed") > 0
    labels = {"job": str(job.pk), "kind": "embed", "worker": running.worker}
    age = _value(scrape, "embedhub_job_heartbeat_age_seconds", **labels)
    assert 0 <= age < settings.EMBEDHUB["STALE_AFTER_SECONDS"]
    assert _value(scrape, "embedhub_worker_heartbeat_age_seconds", worker=running.worker) == age

    assert wait_for_job(job.pk).status == "succeeded"
    index = VectorIndex.objects.get(pk=job.params["index"])
    assert index.hnsw_build_seconds is not None and index.hnsw_build_seconds > 0
    scrape = _scrape(staff_client)
    assert _value(scrape, "embedhub_hnsw_build_seconds_count") == 1
    assert _value(scrape, "embedhub_hnsw_build_seconds_sum") == pytest.approx(
        index.hnsw_build_seconds
    )
    assert _value(scrape, "embedhub_hnsw_build_seconds_bucket", le="+Inf") == 1
    assert _value(scrape, "embedhub_jobs", kind="embed", status="succeeded") == 1
    assert ("embedhub_docs_per_second", frozenset({("kind", "embed")})) not in scrape["samples"]


@pytest.mark.django_db
def test_hnsw_histogram_buckets_are_cumulative(user, corpus, model_version, staff_client):
    for seconds in (0.5, 3.0, 3.5, 7200.0):
        VectorIndex.objects.create(
            owner=user,
            corpus=corpus,
            model_version=model_version,
            dimension=8,
            hnsw_build_seconds=seconds,
        )
    # never built (or built before durations were kept): not an observation
    VectorIndex.objects.create(owner=user, corpus=corpus, model_version=model_version, dimension=8)
    scrape = _scrape(staff_client)
    buckets = {
        le: _value(scrape, "embedhub_hnsw_build_seconds_bucket", le=le)
        for le in ("1.0", "5.0", "3600.0", "14400.0", "+Inf")
    }
    assert buckets == {"1.0": 1, "5.0": 3, "3600.0": 3, "14400.0": 4, "+Inf": 4}
    assert _value(scrape, "embedhub_hnsw_build_seconds_sum") == pytest.approx(7207.0)


@pytest.mark.django_db
def test_anonymous_scrapes_get_401_and_non_staff_sessions_403(user):
    anonymous = Client().get("/metrics")
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"].startswith("Bearer")
    member = Client()
    member.force_login(user)
    assert member.get("/metrics").status_code == 403


@pytest.mark.django_db
def test_the_configured_bearer_token_scrapes_and_any_other_is_refused(settings):
    settings.EMBEDHUB_METRICS_TOKEN = "s3cret-token"
    client = Client()
    ok = client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200 and b"embedhub_jobs" in ok.content
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    settings.EMBEDHUB_METRICS_TOKEN = ""  # unset: no bearer token is accepted, not even ""
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401


@pytest.mark.django_db
def test_public_metrics_need_no_credentials(settings):
    settings.EMBEDHUB_METRICS_PUBLIC = True
    assert Client().get("/metrics").status_code == 200


@pytest.mark.django_db
def test_a_running_job_without_a_heartbeat_yet_is_aged_from_its_start(staff_client, user):
    started = timezone.now() - timedelta(seconds=30)
    job = Job.objects.create(
        owner=user, kind="audit", status="running", worker="w9@host", started_at=started
    )
    scrape = _scrape(staff_client)
    labels = {"job": str(job.pk), "kind": "audit", "worker": "w9@host"}
    assert 30 <= _value(scrape, "embedhub_job_heartbeat_age_seconds", **labels) < 60
