"""Pieces of the audit job that need no model: time sharing, where non-concept queries come
from, and storing passages only while the job is still ours."""

from __future__ import annotations

import uuid

import pytest

from embedhub.audits import selectors, services
from embedhub.evaluation.models import Query, QuerySet
from embedhub.jobs.models import Job
from embedhub.jobs.services import JobLost, job_claim, job_submit
from tests.audits.conftest import OTHER_QUERIES, SMALL, VITAMIN_D, audit_params

pytestmark = pytest.mark.django_db


def test_total_time_limit_is_shared_by_the_passages_still_to_do():
    params = {**SMALL, "budget": 4, "time_limit_s": 100.0, "seed": 7}
    first = services._attack_config(params, i=0, spent=0.0)
    assert first.time_limit_s == pytest.approx(25.0) and first.seed == 7
    # Two passages left after the first two used 60 s: 20 s each.
    third = services._attack_config(params, i=2, spent=60.0)
    assert third.time_limit_s == pytest.approx(20.0) and third.seed == 9
    assert services._attack_config(params, i=3, spent=150.0).time_limit_s == 0.0
    assert (
        services._attack_config({**params, "time_limit_s": None}, i=0, spent=0).time_limit_s is None
    )


def test_non_concept_queries_come_from_the_query_set_or_the_corpus(user, corpus, query_set):
    concept = set(VITAMIN_D)
    texts, source = selectors.non_concept_queries(
        user=user,
        corpus_id=corpus.pk,
        query_set_id=query_set.pk,
        exclude_texts=concept,
        limit=200,
        seed=0,
    )
    assert texts == OTHER_QUERIES and source == f"other queries of query set {query_set.pk}"
    # An inline concept: the user's query sets on the corpus, sampled down to the limit.
    other = QuerySet.objects.create(owner=user, corpus=corpus, name="more")
    Query.objects.create(query_set=other, external_id="x", text="Where is the Bastille?")
    texts, source = selectors.non_concept_queries(
        user=user, corpus_id=corpus.pk, query_set_id=None, exclude_texts=concept, limit=3, seed=0
    )
    assert len(texts) == 3 and not set(texts) & concept
    assert set(texts) <= set(OTHER_QUERIES) | {"Where is the Bastille?"}
    assert str(query_set.pk) in source and str(other.pk) in source


def test_no_non_concept_queries_says_why(user, corpus):
    texts, source = selectors.non_concept_queries(
        user=user, corpus_id=corpus.pk, query_set_id=None, exclude_texts=set(), limit=10, seed=0
    )
    assert texts == [] and "upload a query set" in source


def _running_job(user, index) -> Job:
    params = {
        **audit_params(index),
        "queries": [{"id": "q0", "text": VITAMIN_D[0]}],
        "held_in": 0.5,
        "seed": 0,
        "time_limit_s": None,
    }
    job, _ = job_submit(owner=user, kind="audit", params=params, corpus=index.corpus)
    return job_claim(job_id=job.pk, worker="w1")


def test_a_passage_is_stored_once_and_only_by_the_jobs_owner(user, ready_index):
    job = _running_job(user, ready_index)
    audit = services.audit_for_job(job=job, index=ready_index)
    assert services.audit_for_job(job=job, index=ready_index).pk == audit.pk  # a retry finds it
    audit = services.audit_passage_store(audit=audit, job=job, passage={"target": 0, "text": "a"})
    assert audit.passages == [{"target": 0, "text": "a"}]
    with pytest.raises(JobLost):  # passage 0 again (a duplicate delivery) is refused
        services.audit_passage_store(audit=audit, job=job, passage={"target": 0, "text": "b"})
    # Reaped and claimed elsewhere: a new claim has a new token.
    Job.objects.filter(pk=job.pk).update(worker="w2", claim_token=uuid.uuid4())
    with pytest.raises(JobLost):
        services.audit_passage_store(audit=audit, job=job, passage={"target": 1, "text": "c"})
    audit.refresh_from_db()
    assert audit.passages == [{"target": 0, "text": "a"}]
