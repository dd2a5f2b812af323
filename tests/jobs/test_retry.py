"""A retry re-checks what its kind's submission checked (JobKind.before_retry): a refusal
leaves the job as it was and reaches the API as the kind's error; shards are never
checked (they run inside their parent's claim)."""

from __future__ import annotations

import dataclasses

import pytest

from embedhub.core.errors import Conflict
from embedhub.jobs import kinds
from embedhub.jobs.models import Job
from embedhub.jobs.services import job_retry

pytestmark = pytest.mark.django_db


@pytest.fixture
def refusing_embed(monkeypatch):
    """The embed kind with a before_retry that records its calls and refuses."""
    calls = []

    def refuse(*, job):
        calls.append(job.pk)
        raise Conflict(f"job 4242 blocks job {job.pk}", code="blocked")

    embed = kinds.job_kind_get("embed")
    monkeypatch.setitem(kinds._KINDS, "embed", dataclasses.replace(embed, before_retry=refuse))
    return calls


def _failed(user, **fields) -> Job:
    return Job.objects.create(owner=user, kind="embed", status="failed", error="boom", **fields)


def test_a_refused_retry_leaves_the_job_failed_and_answers_409(api, user, refusing_embed):
    job = _failed(user)
    with pytest.raises(Conflict, match="job 4242 blocks"):
        job_retry(job=job)
    job.refresh_from_db()
    assert (job.status, job.error) == ("failed", "boom")
    assert not job.events.filter(kind="retried").exists()

    response = api.post(f"/api/v1/jobs/{job.pk}/retry/")
    assert response.status_code == 409, response.content
    error = response.json()["error"]
    assert error["code"] == "blocked" and f"blocks job {job.pk}" in error["message"]
    assert refusing_embed == [job.pk, job.pk]


def test_a_shard_retry_skips_the_kinds_check(user, refusing_embed):
    parent = _failed(user)
    shard = _failed(user, parent=parent)
    assert job_retry(job=shard).status == "queued"
    assert refusing_embed == []


def test_a_job_that_cannot_be_retried_is_refused_before_the_kinds_check(user, refusing_embed):
    job = Job.objects.create(owner=user, kind="embed", status="running")
    with pytest.raises(Conflict, match="only failed or cancelled jobs can be retried"):
        job_retry(job=job)
    assert refusing_embed == []


def test_a_retry_reads_the_jobs_current_status_not_the_callers_copy(user):
    job = Job.objects.create(owner=user, kind="embed", status="running")
    Job.objects.filter(pk=job.pk).update(status="failed")  # finished since it was read
    assert job_retry(job=job).status == "queued"
