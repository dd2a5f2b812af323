"""Embed and reindex params that would not change the index built are refused by name,
never accepted and dropped: a chunk size without `chunking: chunk`, a build option that
differs from the index an embed is told to fill; and `chunk_overlap` is bounded whatever
the chunking."""

from __future__ import annotations

import pytest

from embedhub.jobs.models import Job
from embedhub.vectors import services
from embedhub.vectors.jobs import MAX_CHUNK_OVERLAP
from embedhub.vectors.models import VectorIndex
from tests.factories import ModelVersionFactory
from tests.vectors.conftest import make_documents

pytestmark = pytest.mark.django_db


def _submit(api, kind: str, **params):
    return api.post("/api/v1/jobs/", {"kind": kind, "params": params}, format="json")


def _refused(response, field: str) -> str:
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_params"
    assert error["details"]["field"] == f"params.{field}", error
    return error["message"]


@pytest.fixture
def embed(corpus, model_version):
    make_documents(corpus, 3)
    return {"corpus": corpus.pk, "model_version": model_version.pk, "encoder": "fake:8"}


@pytest.mark.parametrize(
    "extra",
    [
        {"chunk_overlap": 5},
        {"chunk_window": 64},
        {"chunking": "truncate", "chunk_overlap": 5},
        {"chunking": "truncate", "chunk_window": 64},
    ],
)
def test_a_chunk_size_without_chunking_is_refused_naming_it(api, embed, extra):
    field = next(key for key in extra if key.startswith("chunk_"))
    message = _refused(_submit(api, "embed", **embed, **extra), field)
    assert message == f"params.{field}: applies only with chunking: chunk"
    assert not Job.objects.exists() and not VectorIndex.objects.exists()


@pytest.mark.parametrize("chunking", [None, "truncate", "chunk"])
def test_chunk_overlap_is_bounded_whatever_the_chunking(api, embed, chunking):
    extra = {"chunking": chunking} if chunking else {}
    message = _refused(
        _submit(api, "embed", **embed, **extra, chunk_overlap=10**30), "chunk_overlap"
    )
    assert f"between 0 and {MAX_CHUNK_OVERLAP}" in message
    assert not Job.objects.exists() and not VectorIndex.objects.exists()


def test_chunk_sizes_with_chunking_are_accepted(api, embed):
    response = _submit(api, "embed", **embed, chunking="chunk", chunk_window=64, chunk_overlap=16)
    assert response.status_code == 202, response.content
    index = VectorIndex.objects.get()
    assert (index.chunking, index.chunk_window, index.chunk_overlap) == ("chunk", 64, 16)


def test_an_embed_into_an_index_refuses_options_other_than_the_indexs(
    api, user, corpus, model_version, embed
):
    index = services.index_create(
        owner=user, corpus=corpus, model_version=model_version, encoder="fake:8"
    )
    into = {**embed, "index": index.pk}
    message = _refused(_submit(api, "embed", **into, storage="halfvec"), "storage")
    assert f"index {index.pk} is built with storage 'vector'" in message
    message = _refused(_submit(api, "embed", **into, chunk_overlap=5), "chunk_overlap")
    assert "applies only with chunking: chunk" in message
    assert not Job.objects.exists()
    # Options that agree with the index change nothing: accepted.
    response = _submit(api, "embed", **into, storage="vector", chunking="truncate")
    assert response.status_code == 202, response.content
    assert Job.objects.get().params["index"] == index.pk


def _active(*, user, corpus, model_version, **options) -> VectorIndex:
    index = services.index_create(
        owner=user, corpus=corpus, model_version=model_version, encoder="fake:8", **options
    )
    VectorIndex.objects.filter(pk=index.pk).update(state=VectorIndex.State.READY)
    corpus.active_index = index
    corpus.save(update_fields=["active_index"])
    return index


def test_a_reindex_of_a_truncating_index_refuses_a_chunk_size(
    api, user, corpus, model_version, embed
):
    _active(user=user, corpus=corpus, model_version=model_version)
    newer = ModelVersionFactory(model=model_version.model, version=model_version.version + 1)
    reindex = {"corpus": corpus.pk, "model_version": newer.pk}
    message = _refused(_submit(api, "reindex", **reindex, chunk_overlap=8), "chunk_overlap")
    assert message.endswith("applies only with chunking: chunk")
    assert not Job.objects.exists()


def test_a_reindex_of_a_chunked_index_takes_a_chunk_size_it_inherits_chunking_for(
    api, user, corpus, model_version, embed
):
    _active(
        user=user,
        corpus=corpus,
        model_version=model_version,
        chunking="chunk",
        chunk_window=64,
        chunk_overlap=16,
    )
    response = _submit(api, "reindex", corpus=corpus.pk, chunk_overlap=8)
    assert response.status_code == 202, response.content
    shadow = VectorIndex.objects.get(pk=response.json()["params"]["index"])
    assert (shadow.chunking, shadow.chunk_window, shadow.chunk_overlap) == ("chunk", 64, 8)
