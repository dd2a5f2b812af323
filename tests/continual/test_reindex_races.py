"""Reindex and retention racing each other: every path takes the corpus row lock and re-checks
under it. Each test holds that lock itself, lets the others queue up behind it (Postgres
says when they wait), then releases it, so the interleaving is fixed, not left to chance."""

from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone
from rest_framework.test import APIClient

from embedhub.continual.services.reindex import indexes_drop_expired, reindex_schedule_submit
from embedhub.corpora.models import Corpus
from embedhub.jobs.models import Job
from embedhub.jobs.runner import job_execute
from embedhub.jobs.submission import job_submit_checked
from embedhub.vectors.models import VectorIndex
from embedhub.vectors.services import index_activate
from tests.factories import ModelVersionFactory
from tests.locking import InThread, wait_for_lock_waiters
from tests.vectors.conftest import make_documents

pytestmark = pytest.mark.django_db(transaction=True)


def _run(job) -> Job:
    job_execute(job_id=job.pk, worker="test@inline")
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    return job


def _table_exists(table: str) -> bool:
    with connection.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", [table])
        return cur.fetchone()[0] is not None


@pytest.fixture
def embedded(user, corpus):
    """(v1, v2, index): the corpus's active index is v1's; v2 is newer, so a reindex may go."""
    v1 = ModelVersionFactory()
    v2 = ModelVersionFactory(model=v1.model, parent=v1)
    make_documents(corpus, 8)
    params = {"corpus": corpus.pk, "model_version": v1.pk, "encoder": "fake:16"}
    job = _run(job_submit_checked(user=user, kind="embed", params=params)[0])
    return v1, v2, VectorIndex.objects.get(pk=job.params["index"])


@pytest.fixture
def reindexed(user, corpus, embedded, settings):
    """(v1, old, new): the corpus moved from v1's index `old` to v2's `new`, and `old` was
    retired longer ago than the retention period."""
    v1, _, old = embedded
    job = _run(job_submit_checked(user=user, kind="reindex", params={"corpus": corpus.pk})[0])
    days = settings.EMBEDHUB["INDEX_RETENTION_DAYS"]
    VectorIndex.objects.filter(pk=old.pk).update(
        retired_at=timezone.now() - timedelta(days=days + 1)
    )
    return v1, old, VectorIndex.objects.get(pk=job.result["index"])


def test_retention_waits_for_a_rollback_in_flight_and_keeps_the_index_it_activated(
    corpus, reindexed
):
    _, old, new = reindexed
    with transaction.atomic():
        index_activate(index=VectorIndex.objects.get(pk=old.pk))  # rollback, not committed
        retention = InThread(indexes_drop_expired)  # sees `old` as retired and expired
        wait_for_lock_waiters(1)
    assert retention.join() == []
    corpus.refresh_from_db()
    old.refresh_from_db()
    assert corpus.active_index_id == old.pk and old.state == "ready"
    assert _table_exists(old.table_name) and _table_exists(new.table_name)


def test_retention_keeps_a_retired_index_a_queued_reindex_will_build_into(user, corpus, reindexed):
    v1, old, _ = reindexed
    back = job_submit_checked(
        user=user, kind="reindex", params={"corpus": corpus.pk, "model_version": v1.pk}
    )[0]
    assert back.params["index"] == old.pk  # the retired index is reused as the shadow
    assert indexes_drop_expired() == []
    assert _table_exists(old.table_name)
    _run(back)
    corpus.refresh_from_db()
    assert corpus.active_index_id == old.pk


def _api_reindex(user, corpus) -> tuple[int, dict]:
    client = APIClient()
    client.force_authenticate(user)
    response = client.post(
        "/api/v1/jobs/", {"kind": "reindex", "params": {"corpus": corpus.pk}}, format="json"
    )
    return response.status_code, response.json()


def _submitted_at_once(corpus, *calls) -> list:
    """Start the calls while this test holds the corpus lock, each once the one before waits
    (Postgres grants a lock in the order it was asked for), then release them together."""
    with transaction.atomic():
        Corpus.objects.select_for_update().get(pk=corpus.pk)
        threads = []
        for call in calls:
            threads.append(InThread(call))
            wait_for_lock_waiters(len(threads))
    return [thread.join() for thread in threads]


def test_two_simultaneous_api_reindexes_of_a_corpus_give_one_job_and_one_409(
    user, corpus, embedded
):
    answers = _submitted_at_once(
        corpus, lambda: _api_reindex(user, corpus), lambda: _api_reindex(user, corpus)
    )
    assert sorted(code for code, _ in answers) == [202, 409]
    refused = next(body for code, body in answers if code == 409)
    assert refused["error"]["code"] == "reindex_running"
    assert Job.objects.filter(kind="reindex", status="queued").count() == 1
    assert VectorIndex.objects.filter(corpus=corpus).count() == 2  # old + one shadow


def test_a_scheduled_reindex_and_an_api_one_at_the_same_instant_give_one_job(
    user, corpus, embedded
):
    # The schedule first: it always locked the corpus, and an API submission that did not
    # would have gone on to a second job behind it.
    (scheduled, outcome), (code, body) = _submitted_at_once(
        corpus, lambda: reindex_schedule_submit(corpus=corpus), lambda: _api_reindex(user, corpus)
    )
    assert outcome == "submitted" and scheduled.status == "queued"
    assert code == 409 and body["error"]["code"] == "reindex_running"
    assert list(Job.objects.filter(kind="reindex")) == [scheduled]
