"""The dashboard shows which runtime built an index and ran an evaluation, and its embed
form chooses the runtime."""

from __future__ import annotations

import pytest

from embedhub.evaluation.models import EvalRun, QuerySet
from embedhub.jobs.models import Job
from embedhub.vectors.models import VectorIndex
from embedhub.vectors.services import index_create
from tests.factories import CorpusFactory, DocumentFactory, ModelVersionFactory

pytestmark = pytest.mark.django_db

REFUSED = {
    "passed": False,
    "forced": True,
    "verdict": "nDCG@10 0.6373 vs 0.6451 in fp32 (-0.78 points, limit -0.5)",
    "ndcg@10_delta_points": -0.78,
    "mean_cosine": 0.9370,
}


@pytest.fixture
def int8_index(user):
    corpus = CorpusFactory(owner=user, name="runtimes")
    DocumentFactory.create_batch(3, corpus=corpus)
    index = index_create(
        owner=user, corpus=corpus, model_version=ModelVersionFactory(), runtime="onnx-int8"
    )
    VectorIndex.objects.filter(pk=index.pk).update(state=VectorIndex.State.READY, quality=REFUSED)
    return VectorIndex.objects.get(pk=index.pk)


def test_index_table_shows_the_runtime_and_the_quality_gates_verdict(client, user, int8_index):
    client.force_login(user)
    body = client.get(f"/corpora/{int8_index.corpus_id}/").content.decode()
    row = body[body.index(f"#{int8_index.pk}") :]
    row = row[: row.index("</tr>")]
    assert "onnx-int8" in row and ">forced<" in row
    assert "-0.78 nDCG pts" in row and "cos 0.9370" in row
    assert f'title="{REFUSED["verdict"]}"' in row


def test_evaluation_table_shows_the_runtime_of_each_run(client, user, int8_index):
    query_set = QuerySet.objects.create(owner=user, corpus=int8_index.corpus, name="test")
    EvalRun.objects.create(
        owner=user,
        query_set=query_set,
        index=int8_index,
        model_version=int8_index.model_version,
        metrics={"ndcg@10": 0.64},
        params={"k": 100, "runtime": "onnx-int8"},
    )
    client.force_login(user)
    body = client.get("/evaluations/").content.decode()
    assert ">Runtime</th>" in body
    assert '<span class="badge queued">onnx-int8</span>' in body


def test_embed_form_submits_the_chosen_runtime_and_force(client, user):
    corpus = CorpusFactory(owner=user, name="form")
    DocumentFactory.create_batch(2, corpus=corpus)
    version = ModelVersionFactory()
    client.force_login(user)
    page = client.get(f"/corpora/{corpus.pk}/").content.decode()
    assert '<option value="onnx-int8">' in page and 'name="force"' in page
    fields = {"kind": "embed", "corpus": corpus.pk, "model_version": version.pk}
    client.post("/jobs/start/", {**fields, "runtime": "onnx-int8", "force": "true"})
    job = Job.objects.get(owner=user, kind="embed")
    assert job.params["force"] is True
    assert VectorIndex.objects.get(pk=job.params["index"]).runtime == "onnx-int8"
