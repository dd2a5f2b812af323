"""A reindex builds its shadow on the active index's runtime unless told otherwise."""

import pytest

from embedhub.jobs.submission import job_submit_checked
from embedhub.vectors import services
from embedhub.vectors.models import VectorIndex
from tests.factories import ModelVersionFactory
from tests.vectors.conftest import make_documents

pytestmark = pytest.mark.django_db


@pytest.fixture
def active_int8(user, corpus):
    v1 = ModelVersionFactory()
    v2 = ModelVersionFactory(model=v1.model, parent=v1)
    make_documents(corpus, 3)
    index = services.index_create(
        owner=user, corpus=corpus, model_version=v1, runtime=VectorIndex.Runtime.ONNX_INT8
    )
    VectorIndex.objects.filter(pk=index.pk).update(state=VectorIndex.State.READY)
    services.index_activate(index=index)
    return v2


def _shadow(user, corpus, **params) -> VectorIndex:
    job, _ = job_submit_checked(user=user, kind="reindex", params={"corpus": corpus.pk, **params})
    return VectorIndex.objects.get(pk=job.params["index"])


def test_a_reindex_inherits_the_runtime_of_the_active_index(user, corpus, active_int8):
    shadow = _shadow(user, corpus, model_version=active_int8.pk)
    assert shadow.runtime == VectorIndex.Runtime.ONNX_INT8
    assert shadow.model_version_id == active_int8.pk


def test_a_reindex_may_move_the_corpus_to_another_runtime(user, corpus, active_int8):
    shadow = _shadow(user, corpus, model_version=active_int8.pk, runtime="torch")
    assert shadow.runtime == VectorIndex.Runtime.TORCH
