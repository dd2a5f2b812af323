"""Sharded jobs: a large embed splits into shard jobs over document-id ranges that any
number of real workers run at once; each shard is a durable job of its own (claim,
heartbeat, checkpoint), the parent sums their progress, cancel stops them all, a killed
shard resumes alone, and HNSW is built once, after the last shard."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from django.db import connection
from django.test import override_settings

from embedhub.jobs.models import Job
from embedhub.jobs.runner import JobContext, job_execute
from embedhub.jobs.services import job_cancel, job_claim, job_retry, job_submit, jobs_reap
from embedhub.jobs.submission import job_submit_checked
from embedhub.vectors import tables
from embedhub.vectors.models import VectorIndex
from tests.conftest import wait_for_job, wait_until
from tests.factories import CorpusFactory
from tests.jobs.test_durability import FAST_REAPER
from tests.vectors.conftest import make_documents
from workers.ml.encoder import load_encoder

pytestmark = pytest.mark.django_db(transaction=True)


def _corpus(user, n: int):
    corpus = CorpusFactory(owner=user, name=f"sharded-{n}")
    make_documents(corpus, n, words=4)
    return corpus


def _embed(user, corpus, model_version, *, encoder="fake:16", shard_size=100, batch_size=16):
    params = {
        "corpus": corpus.pk,
        "model_version": model_version.pk,
        "encoder": encoder,
        "batch_size": batch_size,
        "shard_size": shard_size,
    }
    return job_submit_checked(user=user, kind="embed", params=params)[0]


def _rows(job) -> list[tuple[int, np.ndarray]]:
    table = VectorIndex.objects.get(pk=job.params["index"]).table_name
    with connection.cursor() as cur:
        cur.execute(f"SELECT document_id, embedding::text FROM {table} ORDER BY document_id")
        return [(doc, np.array(eval(text), dtype=np.float32)) for doc, text in cur.fetchall()]  # noqa: S307


def _assert_exactly_once(job, corpus, encoder="fake:16") -> None:
    """One row per document, each the encoder's own vector for that document's text."""
    rows = _rows(job)
    docs = list(corpus.documents.order_by("pk").values_list("pk", "title", "text"))
    assert [doc for doc, _ in rows] == [pk for pk, _, _ in docs]
    expected = load_encoder(encoder).encode([f"{title} {text}" for _, title, text in docs])
    np.testing.assert_allclose(np.stack([v for _, v in rows]), expected, atol=1e-5)


def test_a_large_embed_splits_into_shards_covering_the_corpus_once(user, model_version):
    corpus = _corpus(user, 350)
    job = _embed(user, corpus, model_version)
    assert job_execute(job_id=job.pk, worker="solo") == "succeeded"  # one worker does it all
    job.refresh_from_db()
    shards = list(job.shards.order_by("pk"))
    assert [s.params["shard"]["number"] for s in shards] == [1, 2, 3, 4]
    assert all(s.status == "succeeded" and s.kind == "embed" for s in shards)
    assert [s.progress_total for s in shards] == [100, 100, 100, 50]
    assert job.result["shards"] == 4 and job.result["embedded"] == 350
    assert job.progress_done == job.progress_total == 350
    _assert_exactly_once(job, corpus)
    index = VectorIndex.objects.get(pk=job.params["index"])
    assert index.state == "ready" and tables.hnsw_exists(table=index.table_name)
    # HNSW once, by the parent: no shard reports a graph of its own.
    assert all("hnsw" not in s.result for s in shards) and job.result["hnsw"]["seconds"] >= 0


def test_a_shard_rolls_its_progress_up_only_into_a_parent_counting_its_unit(user):
    """A policy job counts steps: its shards' documents are its own to map, not to add."""
    done = {}
    for kind, unit in (("embed", "docs"), ("policy", "steps")):
        parent = Job.objects.create(
            owner=user, kind=kind, params={}, status="running", progress_unit=unit, progress_done=3
        )
        shard, _ = job_submit(owner=user, kind="embed", params={"index": 0}, parent=parent)
        JobContext(job_claim(job_id=shard.pk, worker="t")).progress(40, total=50, unit="docs")
        done[kind] = Job.objects.get(pk=parent.pk).progress_done
    assert done == {"embed": 40, "policy": 3}


def test_a_parents_shard_counts_stay_current_while_its_worker_runs_a_shard_inline(user):
    """The parent's own loop writes its note between shards; a shard that starts or ends
    refreshes the counts in it, and leaves a note of another phase alone."""
    notes = {}
    for note in ("embedding: 0/3 shards done, 0 running", "building HNSW index"):
        parent = Job.objects.create(
            owner=user, kind="embed", params={}, status="running", progress_unit="docs"
        )
        Job.objects.filter(pk=parent.pk).update(progress_note=note)
        shards = [
            job_submit(owner=user, kind="embed", params={"index": 0}, parent=parent)[0]
            for _ in range(3)
        ]
        Job.objects.filter(pk=shards[0].pk).update(status="succeeded")
        JobContext(job_claim(job_id=shards[1].pk, worker="t")).progress(5, total=9, unit="docs")
        notes[note] = Job.objects.get(pk=parent.pk).progress_note
    assert notes == {
        "embedding: 0/3 shards done, 0 running": "embedding: 1/3 shards done, 1 running",
        "building HNSW index": "building HNSW index",
    }


def test_a_small_embed_is_not_sharded(user, model_version):
    corpus = _corpus(user, 60)
    job = _embed(user, corpus, model_version, shard_size=100)
    assert job_execute(job_id=job.pk, worker="solo") == "succeeded"
    job.refresh_from_db()
    assert not job.shards.exists() and job.result["shards"] == 0


def test_shards_are_hidden_from_the_job_list_and_shown_under_their_job(api, user, model_version):
    corpus = _corpus(user, 250)
    job = _embed(user, corpus, model_version)
    job_execute(job_id=job.pk, worker="solo")
    listed = [row["id"] for row in api.get("/api/v1/jobs/").json()["results"]]
    assert listed == [job.pk]
    detail = api.get(f"/api/v1/jobs/{job.pk}/").json()
    assert [s["status"] for s in detail["shards"]] == ["succeeded"] * 3
    shard_ids = [s["id"] for s in detail["shards"]]
    by_parent = api.get(f"/api/v1/jobs/?parent={job.pk}").json()["results"]
    assert sorted(row["id"] for row in by_parent) == shard_ids
    assert all(row["parent"] == job.pk for row in by_parent)


def test_shards_of_one_job_run_on_several_workers_at_once_and_progress_sums(
    user, model_version, start_worker
):
    corpus = _corpus(user, 1200)
    workers = [start_worker(f"w{i}") for i in range(3)]
    # 60 ms per batch of 16: sleep-bound like an accelerator, so three workers overlap.
    job = _embed(user, corpus, model_version, encoder="fake:16@60ms", shard_size=200)
    seen, done = [], threading.Event()

    def watch():
        while not done.is_set():
            seen.append(Job.objects.get(pk=job.pk).progress_done)
            done.wait(0.1)
        connection.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        job = wait_for_job(job.pk, timeout=180)
    finally:
        done.set()
        watcher.join()
    assert job.status == "succeeded", job.error
    shards = list(job.shards.all())
    assert len(shards) == 6 and all(s.status == "succeeded" for s in shards)
    ran_on = {s.worker.split("@")[0] for s in shards}
    assert len(ran_on) >= 2, ran_on  # not one worker doing everything
    assert seen == sorted(seen) and seen[-1] <= 1200  # never backwards
    assert any(0 < value < 1200 for value in seen)  # partial sums were visible
    _assert_exactly_once(job, corpus, "fake:16@60ms")
    assert workers  # kept alive until here


def test_a_killed_shard_resumes_alone_and_the_job_finishes_exactly_once(
    user, model_version, start_worker
):
    corpus = _corpus(user, 1200)
    doomed = start_worker("doomed")
    job = _embed(user, corpus, model_version, encoder="fake:16@60ms", shard_size=400)
    wait_until(
        lambda: job.shards.filter(status="running", progress_done__gt=50).exists(),
        timeout=120,
        what="a shard midway",
    )
    doomed.kill()
    survivors = [start_worker("rescuer-a"), start_worker("rescuer-b")]
    with override_settings(EMBEDHUB=FAST_REAPER):
        wait_until(lambda: jobs_reap()["requeued"], timeout=30, what="reaper")
        job = wait_for_job(job.pk, timeout=240)
    assert job.status == "succeeded", job.error
    shards = list(job.shards.order_by("pk"))
    assert len(shards) == 3 and all(s.status == "succeeded" for s in shards)
    resumed = [s for s in shards if s.attempts > 1]
    assert resumed, [s.attempts for s in shards]
    # The resumed shard embedded only what its first attempt had not committed.
    for shard in resumed:
        assert shard.result["skipped_unchanged"] > 0
        assert shard.result["embedded"] + shard.result["skipped_unchanged"] == 400
    # As in an unsharded build, the job's counts are from its last attempt's start: what was
    # then pending is embedded, the rest was up to date (the shards' own counts missed what
    # their lost attempts had committed, and added up to less than the corpus).
    assert job.result["embedded"] + job.result["skipped_unchanged"] == 1200
    assert job.result["embedded"] > 0
    _assert_exactly_once(job, corpus, "fake:16@60ms")
    assert survivors


def test_cancelling_a_sharded_job_stops_every_shard(user, model_version, start_worker):
    corpus = _corpus(user, 1200)
    start_worker("a")
    start_worker("b")
    job = _embed(user, corpus, model_version, encoder="fake:16@60ms", shard_size=200)
    wait_until(lambda: job.shards.filter(status="running").count() >= 2, timeout=120, what="shards")
    job_cancel(job=Job.objects.get(pk=job.pk))
    job = wait_for_job(job.pk, timeout=60)
    assert job.status == "cancelled"
    wait_until(
        lambda: not job.shards.exclude(status="cancelled").exclude(status="succeeded").exists(),
        timeout=60,
        what="every shard stopped",
    )
    assert job.shards.filter(status="cancelled").exists()
    index = VectorIndex.objects.get(pk=job.params["index"])
    assert not tables.hnsw_exists(table=index.table_name)  # no graph over a partial table


def test_a_shard_cancelled_alone_fails_its_job_whose_retry_resumes_only_that_shard(
    user, model_version, start_worker
):
    corpus = _corpus(user, 900)
    start_worker("a")
    start_worker("b")
    job = _embed(user, corpus, model_version, encoder="fake:16@60ms", shard_size=300)
    victim = wait_until(
        lambda: job.shards.filter(status="running", progress_done__gt=30).first(),
        timeout=120,
        what="a running shard",
    )
    job_cancel(job=victim)
    job = wait_for_job(job.pk, timeout=120)
    assert job.status == "failed" and f"shard job {victim.pk} cancelled" in job.error
    job_retry(job=job)
    job = wait_for_job(job.pk, timeout=180)
    assert job.status == "succeeded", job.error
    victim.refresh_from_db()
    assert victim.status == "succeeded" and victim.result["skipped_unchanged"] > 0
    assert job.shards.count() == 3  # the same shards, none created twice
    _assert_exactly_once(job, corpus, "fake:16@60ms")
