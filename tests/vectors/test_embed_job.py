import numpy as np
import pytest
from django.db import connection

from embedhub.corpora.models import Document
from embedhub.evaluation.models import QuerySet
from embedhub.jobs.models import Job
from embedhub.jobs.runner import job_execute
from embedhub.jobs.submission import job_submit_checked
from embedhub.vectors import selectors, services
from embedhub.vectors.models import VectorIndex
from tests.conftest import wait_for_job
from tests.vectors.conftest import make_documents
from workers.ml.encoder import FakeEncoder, chunk_spans

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


def _post_embed(api, **params):
    return api.post("/api/v1/jobs/", {"kind": "embed", "params": params}, format="json")


def test_encoder_overrides_are_refused_where_the_setting_is_off(
    api, user, corpus, model_version, settings
):
    make_documents(corpus, 5)
    fake_index = services.index_create(
        owner=user, corpus=corpus, model_version=model_version, encoder="fake:8"
    )
    settings.EMBEDHUB = {**settings.EMBEDHUB, "ALLOW_FAKE_ENCODER": False}
    response = _post_embed(api, corpus=corpus.pk, encoder="fake:8")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["details"]["field"] == "params.encoder"
    assert "EMBEDHUB_ALLOW_FAKE_ENCODER" in error["message"]
    # Not a fake at all: refused whatever the setting, never looked up as a hub id.
    response = _post_embed(api, corpus=corpus.pk, encoder="fakeorg/model")
    assert response.status_code == 400 and 'only "fake"' in response.json()["error"]["message"]
    # An index built with the fake while it was allowed is not embedded into any more.
    response = _post_embed(api, corpus=corpus.pk, index=fake_index.pk)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["details"]["field"] == "params.index" and "test encoder" in error["message"]
    assert not Job.objects.exists()
    assert list(VectorIndex.objects.values_list("pk", flat=True)) == [fake_index.pk]


def test_a_fake_index_is_not_searched_or_evaluated_where_the_setting_is_off(
    api, user, corpus, model_version, settings
):
    make_documents(corpus, 5)
    index = services.index_create(
        owner=user, corpus=corpus, model_version=model_version, encoder="fake:8"
    )
    VectorIndex.objects.filter(pk=index.pk).update(state=VectorIndex.State.READY)
    settings.EMBEDHUB = {**settings.EMBEDHUB, "ALLOW_FAKE_ENCODER": False}
    response = api.post("/api/v1/search/", {"index": index.pk, "query": "w1"}, format="json")
    assert response.status_code == 400
    assert "EMBEDHUB_ALLOW_FAKE_ENCODER" in response.json()["error"]["message"]
    query_set = QuerySet.objects.create(owner=user, corpus=corpus, name="test")
    params = {"index": index.pk, "query_set": query_set.pk}
    response = api.post("/api/v1/jobs/", {"kind": "evaluate", "params": params}, format="json")
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["details"]["field"] == "params.index" and "test encoder" in error["message"]
    assert not Job.objects.exists()


def test_chunk_stride_must_be_at_least_a_quarter_of_the_window(api, corpus, model_version):
    make_documents(corpus, 5)
    chunked = {"corpus": corpus.pk, "encoder": "fake:8", "chunking": "chunk", "chunk_window": 64}
    response = _post_embed(api, **chunked, chunk_overlap=49)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["details"]["field"] == "params.chunk_overlap"
    assert "stride of 15 tokens" in error["message"] and "at most 48" in error["message"]
    assert not VectorIndex.objects.exists()
    response = _post_embed(api, **chunked, chunk_overlap=48)  # stride 16: exactly a quarter
    assert response.status_code == 202, response.content


def test_chunks_past_the_per_document_cap_are_dropped_and_counted(
    user, corpus, model_version, settings
):
    settings.EMBEDHUB = {**settings.EMBEDHUB, "MAX_CHUNKS_PER_DOCUMENT": 3}
    long_text = " ".join(f"w{i}" for i in range(200))
    Document.objects.bulk_create(
        Document(corpus=corpus, external_id=ext, title="", text=text, content_hash=ext * 32)
        for ext, text in [("sh", "a short one"), ("lo", long_text), ("l2", long_text + " x")]
    )
    params = {
        "corpus": corpus.pk,
        "model_version": model_version.pk,
        "encoder": "fake:8",
        "chunking": "chunk",
        "chunk_window": 16,
        "chunk_overlap": 4,
    }
    job, _ = job_submit_checked(user=user, kind="embed", params=params)
    assert job_execute(job_id=job.pk, worker="test@inline") == "succeeded"
    job.refresh_from_db()
    # The fake encoder's tokens are words: 200 words in windows of 16 advancing by 12.
    windows = len(chunk_spans(200, size=16, overlap=4)), len(chunk_spans(201, size=16, overlap=4))
    assert windows == (17, 17)
    assert job.result["chunks_dropped"] == (17 - 3) * 2
    assert job.result["documents_capped"] == 2 and job.result["max_chunks_per_document"] == 3
    index = VectorIndex.objects.get(pk=job.params["index"])
    with connection.cursor() as cur:
        cur.execute(
            f"SELECT d.external_id, array_agg(v.chunk ORDER BY v.chunk) FROM {index.table_name} v "
            "JOIN corpora_document d ON d.id = v.document_id GROUP BY d.external_id"
        )
        chunks = dict(cur.fetchall())
    assert chunks == {"sh": [0], "lo": [0, 1, 2], "l2": [0, 1, 2]}


def test_vector_blocks_stream_every_chunk0_vector_in_document_order(user, corpus, model_version):
    make_documents(corpus, 1000)
    params = {"corpus": corpus.pk, "model_version": model_version.pk, "encoder": "fake:8"}
    job, _ = job_submit_checked(user=user, kind="embed", params=params)
    assert job_execute(job_id=job.pk, worker="test@inline") == "succeeded"
    index = VectorIndex.objects.get(pk=job.params["index"])
    blocks = list(selectors.index_vector_blocks(index=index, block_rows=64))
    # Memory holds one block: 16 of at most 64 rows, never the whole index.
    assert [len(ids) for ids, _ in blocks] == [64] * 15 + [40]
    ids = np.concatenate([ids for ids, _ in blocks])
    vectors = np.concatenate([vecs for _, vecs in blocks])
    doc_ids, _, matrix = selectors.index_vectors(index=index)
    np.testing.assert_array_equal(ids, doc_ids)
    np.testing.assert_array_equal(vectors, matrix)
    assert not connection.in_atomic_block  # the cursor's transaction ended with the stream
