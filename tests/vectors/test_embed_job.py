import numpy as np
import pytest
from django.db import connection

from embedhub.jobs.submission import job_submit_checked
from embedhub.vectors import selectors
from embedhub.vectors.models import VectorIndex
from tests.conftest import wait_for_job
from tests.vectors.conftest import make_documents
from workers.ml.encoder import FakeEncoder

pytestmark = pytest.mark.django_db(transaction=True)


def _rows(index):
    with connection.cursor() as cur:
        cur.execute(f"SELECT count(*), count(DISTINCT document_id) FROM {index.table_name}")
        return cur.fetchone()


def test_embed_job_writes_one_vector_per_document_and_activates_the_index(
    user, corpus, model_version, worker
):
    make_documents(corpus, 300)
    params = {
        "corpus": corpus.pk,
        "model_version": model_version.pk,
        "encoder": "fake:64",
        "batch_size": 32,
    }
    job, created = job_submit_checked(user=user, kind="embed", params=params)
    assert created
    job = wait_for_job(job.pk)
    assert job.status == "succeeded", job.error
    index = VectorIndex.objects.get(pk=job.params["index"])
    assert index.state == "ready"
    assert _rows(index) == (300, 300)
    corpus.refresh_from_db()
    assert corpus.active_index_id == index.pk
    assert job.progress_done == job.progress_total == 300
    # The stored vector is the encoder's vector for that document's text.
    _, ext_ids, matrix = selectors.index_vectors(index=index)
    expected = FakeEncoder(dimension=64).encode(
        ["Doc 0 " + corpus.documents.get(external_id="d0").text]
    )
    assert np.allclose(matrix[ext_ids.index("d0")], expected[0], atol=1e-6)


def test_second_embed_job_only_embeds_added_and_changed_documents(
    user, corpus, model_version, worker
):
    make_documents(corpus, 100)
    params = {"corpus": corpus.pk, "model_version": model_version.pk, "encoder": "fake:64"}
    first = wait_for_job(job_submit_checked(user=user, kind="embed", params=params)[0].pk)
    make_documents(corpus, 20, start=100)
    doc = corpus.documents.get(external_id="d5")
    doc.text, doc.content_hash = "changed text", "f" * 64
    doc.save()
    second = wait_for_job(job_submit_checked(user=user, kind="embed", params=params)[0].pk)
    assert second.status == "succeeded", second.error
    assert second.params["index"] == first.params["index"]
    assert second.result["embedded"] == 21
    assert _rows(VectorIndex.objects.get(pk=second.params["index"])) == (120, 120)


def test_search_api_returns_ranked_documents(api, user, corpus, model_version, worker):
    make_documents(corpus, 50)
    params = {"corpus": corpus.pk, "model_version": model_version.pk, "encoder": "fake:64"}
    wait_for_job(job_submit_checked(user=user, kind="embed", params=params)[0].pk)
    text = "Doc 7 " + corpus.documents.get(external_id="d7").text
    for exact in (False, True):
        response = api.post(
            "/api/v1/search/",
            {"corpus": corpus.pk, "query": text, "k": 5, "exact": exact},
            format="json",
        )
        assert response.status_code == 200, response.content
        results = response.json()["results"]
        assert len(results) == 5
        assert results[0]["external_id"] == "d7"  # fake vectors: identical text, cosine 1
        assert results[0]["score"] == pytest.approx(1.0, abs=1e-5)
        assert [r["score"] for r in results] == sorted([r["score"] for r in results], reverse=True)
