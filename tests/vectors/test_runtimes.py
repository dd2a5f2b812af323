"""Index runtimes: an onnx-int8 index is built, searched and evaluated by its own runtime,
passes or fails its quality gate on real measurements, and is never reused for another
runtime. Real all-MiniLM-L6-v2 on 60 SciFact documents and 30 queries."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from embedhub.corpora.models import Document
from embedhub.evaluation.models import EvalRun
from embedhub.evaluation.services import query_set_create
from embedhub.jobs.models import Job
from embedhub.jobs.runner import job_execute
from embedhub.jobs.submission import job_submit_checked
from embedhub.registry import encoders
from embedhub.registry.encoders import encoder_for, onnx_cache_root
from embedhub.vectors import selectors, services
from embedhub.vectors.models import VectorIndex
from tests.conftest import ROOT
from workers.ml.runtimes import artifact_digest, onnx_model_file

# Transactional: job_execute runs in-process exactly as in a worker (its heartbeat thread
# needs committed rows).
pytestmark = pytest.mark.django_db(transaction=True)

MINI = ROOT / "samples" / "scifact-mini"
N_DOCS = 60


def _run(job) -> Job:
    job_execute(job_id=job.pk, worker="test@inline")
    job.refresh_from_db()
    return job


def _submit(api, kind: str, params: dict):
    return api.post("/api/v1/jobs/", {"kind": kind, "params": params}, format="json")


@pytest.fixture
def scifact(user, corpus, tmp_path):
    """The 34 documents the 30 queries judge relevant plus others up to 60, and the queries."""
    qrels = (MINI / "qrels" / "test.tsv").read_text().splitlines()[1:]
    relevant = {line.split("\t")[1] for line in qrels}
    docs = [json.loads(line) for line in (MINI / "corpus.jsonl").read_text().splitlines()]
    chosen = [d for d in docs if d["_id"] in relevant]
    chosen += [d for d in docs if d["_id"] not in relevant][: N_DOCS - len(chosen)]
    Document.objects.bulk_create(
        Document(
            corpus=corpus,
            external_id=d["_id"],
            title=d["title"],
            text=d["text"],
            content_hash=hashlib.sha256(f"{d['title']}\n{d['text']}".encode()).hexdigest(),
        )
        for d in chosen
    )
    qrels_path = tmp_path / "qrels.tsv"
    qrels_path.write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels) + "\n")
    query_set, _ = query_set_create(
        owner=user,
        corpus=corpus,
        name="test",
        queries_file=MINI / "queries.jsonl",
        qrels_file=qrels_path,
    )
    return corpus, query_set


@pytest.fixture
def fresh_encoders():
    """Encoders loaded from this test's ARTIFACT_ROOT, not from an earlier test's."""
    encoders._load.cache_clear()
    yield
    encoders._load.cache_clear()


def _stored_vectors(index: VectorIndex) -> dict[str, np.ndarray]:
    _, external_ids, matrix = selectors.index_vectors(index=index)
    return dict(zip(external_ids, matrix, strict=True))


def _as_the_job_encodes(encoder, corpus) -> dict[str, np.ndarray]:
    """Documents in id order through iter_encode: the job's batches, so int8's per-batch
    activation scales are the same ones."""
    docs = list(corpus.documents.order_by("id"))
    items = [(d.external_id, selectors.document_text(d.title, d.text)) for d in docs]
    return {
        key: vector
        for batch in encoder.iter_encode(items, kind="document")
        for key, vector in zip(batch.keys, batch.vectors, strict=True)
    }


@pytest.mark.slow
def test_an_int8_embed_job_builds_an_index_that_shows_and_searches_with_its_runtime(
    api, user, scifact, model_version
):
    corpus, query_set = scifact
    response = _submit(
        api,
        "embed",
        {"corpus": corpus.pk, "model_version": model_version.pk, "runtime": "onnx-int8"},
    )
    assert response.status_code == 202, response.content
    job = _run(Job.objects.get(pk=response.json()["id"]))
    assert job.status == "succeeded", job.error
    body = api.get(f"/api/v1/indexes/{job.params['index']}/").json()
    assert body["runtime"] == job.result["runtime"] == "onnx-int8"
    quality = body["quality"]
    assert quality == job.result["quality"]
    assert quality["passed"] and not quality["forced"] and not quality["sampled"]
    assert quality["documents"] == N_DOCS and quality["queries"] == 30
    assert quality["query_set"] == query_set.pk
    assert quality["mean_cosine"] > 0.99 and quality["ndcg@10_delta_points"] >= -0.5

    index = VectorIndex.objects.get(pk=body["id"])
    int8 = encoder_for(model_version=model_version, runtime="onnx-int8")
    fp32 = encoder_for(model_version=model_version)
    stored, expected = _stored_vectors(index), _as_the_job_encodes(int8, corpus)
    assert all(np.allclose(stored[key], expected[key], atol=1e-5) for key in stored)
    torch_vectors = _as_the_job_encodes(fp32, corpus)
    assert not any(np.allclose(stored[key], torch_vectors[key], atol=1e-3) for key in stored)

    # A search encodes its query with int8 too: the score is the int8 query's cosine.
    query = "ADAR1 binds to Dicer to cleave pre-miRNA."
    found = api.post(
        "/api/v1/search/", {"index": index.pk, "query": query, "k": 3, "exact": True}, format="json"
    ).json()
    assert found["runtime"] == "onnx-int8"
    top = found["results"][0]
    vector = stored[top["external_id"]]
    assert abs(top["score"] - float(int8.encode([query], kind="query")[0] @ vector)) < 1e-4
    assert abs(top["score"] - float(fp32.encode([query], kind="query")[0] @ vector)) > 1e-4

    # So does an evaluation, and its run says so.
    evaluation = _submit(api, "evaluate", {"index": index.pk, "query_set": query_set.pk})
    run_job = _run(Job.objects.get(pk=evaluation.json()["id"]))
    assert run_job.status == "succeeded", run_job.error
    assert run_job.result["runtime"] == "onnx-int8"
    assert EvalRun.objects.get(pk=run_job.result["eval_run"]).params["runtime"] == "onnx-int8"
    listed = api.get(f"/api/v1/eval-runs/?query_set={query_set.pk}").json()["results"]
    assert listed[0]["params"]["runtime"] == "onnx-int8"


@pytest.mark.slow
def test_the_gate_samples_a_corpus_larger_than_its_budget(user, scifact, model_version, settings):
    corpus, _ = scifact
    settings.EMBEDHUB = {**settings.EMBEDHUB, "RUNTIME_GATE_DOCS": 40}
    params = {"corpus": corpus.pk, "model_version": model_version.pk, "runtime": "onnx-int8"}
    job = _run(job_submit_checked(user=user, kind="embed", params=params)[0])
    assert job.status == "succeeded", job.error
    quality = job.result["quality"]
    assert quality["sampled"] and quality["corpus_documents"] == N_DOCS
    assert quality["documents"] <= 40 and 1 <= quality["queries"] < 30
    assert quality["passed"]


def _corrupt_int8(model_version) -> None:
    """Put a noised copy of the fp32 graph where the int8 one is cached: the onnx-int8
    runtime then really encodes badly, and the gate must measure it."""
    folder = onnx_cache_root() / artifact_digest(model_version.artifact_path)
    fp32 = onnx_model_file(
        model_version.artifact_path, runtime="onnx", cache_root=onnx_cache_root()
    )
    model, rng = onnx.load(fp32), np.random.default_rng(0)
    for weight in model.graph.initializer:
        array = numpy_helper.to_array(weight)
        # The layers' float matrices only: not the embeddings, not integer index tensors.
        if array.dtype == np.float32 and array.ndim == 2 and array.shape[0] <= 1536:
            noised = array + rng.normal(0, array.std(), array.shape).astype(np.float32)
            weight.CopyFrom(numpy_helper.from_array(noised, weight.name))
    onnx.save(model, folder / "int8.onnx")


@pytest.mark.slow
def test_the_gate_refuses_an_int8_index_losing_more_than_half_a_point_unless_forced(
    api, user, scifact, model_version, settings, tmp_path, fresh_encoders
):
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    _corrupt_int8(model_version)
    corpus, _ = scifact
    params = {"corpus": corpus.pk, "model_version": model_version.pk, "runtime": "onnx-int8"}
    job = _run(Job.objects.get(pk=_submit(api, "embed", params).json()["id"]))
    assert job.status == "failed"
    assert "refused by the quality gate" in job.error and "force: true" in job.error
    index = VectorIndex.objects.get(pk=job.params["index"])
    assert index.state == VectorIndex.State.BUILDING  # never searchable, never active
    assert index.quality["passed"] is False and index.quality["ndcg@10_delta_points"] < -0.5
    corpus.refresh_from_db()
    assert corpus.active_index_id is None

    # Measured already: a new job without force is refused at submission, naming the loss.
    refused = _submit(api, "embed", params)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["details"]["field"] == "params.runtime" and "points" in error["message"]

    # Forced: the same index, its stored measurement kept, marked forced, and searchable.
    forced = _run(Job.objects.get(pk=_submit(api, "embed", {**params, "force": True}).json()["id"]))
    assert forced.status == "succeeded", forced.error
    assert forced.params["index"] == index.pk and forced.result["embedded"] == 0
    index.refresh_from_db()
    assert index.state == VectorIndex.State.READY
    assert index.quality["forced"] and index.quality["passed"] is False
    assert index.quality["measured_at"] == forced.result["quality"]["measured_at"]


def test_an_index_of_another_runtime_is_never_reused(user, corpus, model_version):
    Document.objects.create(corpus=corpus, external_id="d0", text="one", content_hash="0" * 64)
    torch_index = services.index_create(owner=user, corpus=corpus, model_version=model_version)
    base = {"corpus": corpus.pk, "model_version": model_version.pk}
    same = job_submit_checked(user=user, kind="embed", params=base)[0]
    onnx = job_submit_checked(user=user, kind="embed", params={**base, "runtime": "onnx"})[0]
    again = job_submit_checked(user=user, kind="embed", params={**base, "runtime": "onnx"})[0]
    assert same.params["index"] == torch_index.pk
    assert onnx.params["index"] == again.params["index"] != torch_index.pk
    assert VectorIndex.objects.get(pk=onnx.params["index"]).runtime == "onnx"


def test_the_fake_encoder_refuses_another_runtime(api, corpus, model_version):
    Document.objects.create(corpus=corpus, external_id="d0", text="one", content_hash="0" * 64)
    params = {"corpus": corpus.pk, "encoder": "fake:8", "runtime": "onnx-int8"}
    response = _submit(api, "embed", params)
    assert response.status_code == 400
    assert response.json()["error"]["details"]["field"] == "params.runtime"
    assert not VectorIndex.objects.exists()
