"""compensation="adapter" chains the stored adapters of every version between the query's
and the index's (real all-MiniLM-L6-v2 encodes; the adapters are set by hand)."""

from pathlib import Path

import numpy as np
import pytest

from embedhub.core.errors import ApplicationError
from embedhub.registry.services import ADAPTER_FILE
from embedhub.vectors.compensation import COMPENSATIONS, query_vectors
from embedhub.vectors.models import VectorIndex
from tests.factories import CorpusFactory, ModelVersionFactory
from workers.ml.adapter import Adapter, normalize

QUERIES = ["does vitamin d prevent fractures", "what is zorbl?"]


def _adapter(seed: int, d: int = 384) -> Adapter:
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return Adapter(
        weight=rotation.astype(np.float32),
        bias=(0.05 * rng.normal(size=d)).astype(np.float32),
        method="ridge",
    )


def _child(parent, tmp_path, seed: int | None):
    child = ModelVersionFactory(
        model=parent.model,
        version=parent.version + 1,
        parent=parent,
        drift=np.zeros(384, dtype=np.float32),
    )
    if seed is not None:
        path = tmp_path / f"v{child.version}-{ADAPTER_FILE}"
        path.write_bytes(_adapter(seed).to_bytes())
        child.adapter_path = str(path)
        child.adapter = {"method": "ridge"}
        child.save()
    return child


def _lineage(user, corpus, tmp_path, *, v1_seed: int | None = 1):
    """v0 → v1 → v2 (v2's adapter seed 2) and an index of `corpus` built by v0."""
    v0 = ModelVersionFactory()
    v1 = _child(v0, tmp_path, seed=v1_seed)
    v2 = _child(v1, tmp_path, seed=2)
    index = VectorIndex.objects.create(owner=user, corpus=corpus, model_version=v0, dimension=384)
    return v0, v1, v2, index


@pytest.mark.django_db
def test_adapter_chain_maps_the_newest_queries_back_to_the_index_version(user, corpus, tmp_path):
    v0, v1, v2, index = _lineage(user, corpus, tmp_path)
    assert "adapter" in COMPENSATIONS

    raw, info = query_vectors(index=index, texts=QUERIES, model_version=v2, compensation="none")
    got, info = query_vectors(index=index, texts=QUERIES, model_version=v2, compensation="adapter")
    assert info["compensation"] == "adapter" and info["drift_steps"] == 2
    # v2's adapter first (v2 → v1), then v1's (v1 → v0).
    expected = normalize(_adapter(1).map(_adapter(2).map(raw)))
    assert np.allclose(got, expected, atol=1e-5)
    assert not np.allclose(got, normalize(_adapter(2).map(_adapter(1).map(raw))), atol=1e-3)
    # One step: the child's adapter alone; the index's own version: nothing to apply.
    one, _ = query_vectors(index=index, texts=QUERIES, model_version=v1, compensation="adapter")
    raw1, _ = query_vectors(index=index, texts=QUERIES, model_version=v1, compensation="none")
    assert np.allclose(one, _adapter(1).apply(raw1), atol=1e-5)
    same, info = query_vectors(index=index, texts=QUERIES, compensation="adapter")
    assert info["compensation"] == "none"


@pytest.mark.django_db
def test_a_version_without_an_adapter_on_the_path_is_refused(user, corpus, tmp_path):
    # v1 was fine-tuned before adapters existed
    v0, v1, v2, index = _lineage(user, corpus, tmp_path, v1_seed=None)
    with pytest.raises(ApplicationError) as refused:
        query_vectors(index=index, texts=QUERIES, model_version=v2, compensation="adapter")
    assert refused.value.code == "no_adapter" and str(v1) in str(refused.value)
    # QDC still works on the same path: the refusal is the adapter's alone.
    _, info = query_vectors(index=index, texts=QUERIES, model_version=v2, compensation="qdc")
    assert info["compensation"] == "qdc"


def _corpus_adapter(version, tmp_path, *, corpus, into, seed: int) -> None:
    """Record on `version` an adapter fitted for `corpus` straight into `into`'s space."""
    folder = tmp_path / f"artifacts-v{version.version}"
    if not folder.exists():  # the version's weights stay where they are, linked
        folder.mkdir()
        for weights in Path(version.artifact_path).iterdir():
            (folder / weights.name).symlink_to(weights)
    (folder / f"adapter-corpus-{corpus.pk}.npz").write_bytes(_adapter(seed).to_bytes())
    version.artifact_path = str(folder)
    entry = {"file": f"adapter-corpus-{corpus.pk}.npz", "target_version": into.pk}
    version.adapter = {**(version.adapter or {}), "per_corpus": {str(corpus.pk): entry}}
    version.save()


@pytest.mark.django_db
def test_each_hop_takes_the_corpus_adapter_where_the_version_fitted_one(user, corpus, tmp_path):
    v0, v1, v2, index = _lineage(user, corpus, tmp_path)
    raw, _ = query_vectors(index=index, texts=QUERIES, model_version=v2, compensation="none")
    # v1 fitted this corpus into v0's index: v2's own version adapter, then v1's corpus one.
    _corpus_adapter(v1, tmp_path, corpus=corpus, into=v0, seed=11)
    got, info = query_vectors(index=index, texts=QUERIES, model_version=v2, compensation="adapter")
    assert info["adapter"] == "corpus+version"
    assert np.allclose(got, normalize(_adapter(11).map(_adapter(2).map(raw))), atol=1e-5)
    # v2 later fitted it into v1's index (the corpus had moved on): two corpus hops.
    _corpus_adapter(v2, tmp_path, corpus=corpus, into=v1, seed=12)
    got, info = query_vectors(index=index, texts=QUERIES, model_version=v2, compensation="adapter")
    assert info["adapter"] == "corpus"
    assert np.allclose(got, normalize(_adapter(11).map(_adapter(12).map(raw))), atol=1e-5)


@pytest.mark.django_db
def test_a_corpus_adapter_bridges_a_version_with_no_adapter_of_its_own(user, corpus, tmp_path):
    v0 = ModelVersionFactory()
    v1 = _child(v0, tmp_path, seed=None)
    v2 = _child(v1, tmp_path, seed=2)
    other = VectorIndex.objects.create(
        owner=user, corpus=CorpusFactory(owner=user), model_version=v0, dimension=384
    )
    index = VectorIndex.objects.create(owner=user, corpus=corpus, model_version=v0, dimension=384)
    # v2 fitted this corpus straight into v0's index: v1's missing adapter is never needed.
    _corpus_adapter(v2, tmp_path, corpus=corpus, into=v0, seed=12)
    raw, _ = query_vectors(index=index, texts=QUERIES, model_version=v2, compensation="none")
    got, info = query_vectors(index=index, texts=QUERIES, model_version=v2, compensation="adapter")
    assert info["adapter"] == "corpus"
    assert np.allclose(got, _adapter(12).apply(raw), atol=1e-5)
    # Another corpus has no such adapter, so its path still needs v1's.
    with pytest.raises(ApplicationError) as refused:
        query_vectors(index=other, texts=QUERIES, model_version=v2, compensation="adapter")
    assert refused.value.code == "no_adapter" and str(v1) in str(refused.value)
