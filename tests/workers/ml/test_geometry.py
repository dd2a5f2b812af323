"""Geometry statistics on hand-made vectors whose answers are known in closed form."""

from __future__ import annotations

import numpy as np
import pytest

from workers.ml.geometry import (
    DocGeometry,
    geometry_report,
    kth_neighbour_scores,
    mean_random_pair_cosine,
)


def _unit_2d(cosines: np.ndarray) -> np.ndarray:
    """Unit vectors whose cosine to (1, 0) is each given value."""
    return np.stack([cosines, np.sqrt(1 - cosines**2)], axis=1)


def test_norm_quantiles_are_exact_on_known_norms():
    docs = np.array([[1.0, 0], [0, 2.0], [3.0, 0], [0, 4.0], [5.0, 0]])
    q = geometry_report(doc_vecs=docs, query_vecs=None, topk_scores=None)["doc_norm_quantiles"]
    assert q["q00"] == pytest.approx(1.0)
    assert q["q50"] == pytest.approx(3.0)
    assert q["q100"] == pytest.approx(5.0)
    assert q["q25"] == pytest.approx(2.0)
    assert list(q) == ["q00", "q05", "q25", "q50", "q75", "q95", "q100"]


def test_anisotropy_is_one_for_collinear_and_near_zero_for_isotropic_vectors():
    collinear = np.outer(np.arange(1, 51), np.ones(8))
    assert mean_random_pair_cosine(collinear, sample_pairs=2000) == pytest.approx(1.0)
    isotropic = np.random.default_rng(0).normal(size=(500, 256))
    assert abs(mean_random_pair_cosine(isotropic, sample_pairs=5000)) < 0.02


def test_anisotropy_never_pairs_a_vector_with_itself():
    opposite = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert mean_random_pair_cosine(opposite, sample_pairs=100) == pytest.approx(-1.0)


def test_tenth_neighbour_is_read_from_the_real_topk_column():
    topk = np.tile(np.linspace(0.9, 0.5, 20), (3, 1))
    topk[1] -= 0.1
    report = geometry_report(doc_vecs=np.eye(4), query_vecs=None, topk_scores=topk)
    expected = np.linspace(0.9, 0.5, 20)[9]
    assert report["tenth_neighbour_quantiles"]["q100"] == pytest.approx(expected)
    assert report["tenth_neighbour_quantiles"]["q00"] == pytest.approx(expected - 0.1)
    assert report["n_queries"] == 3


def test_tenth_neighbour_from_exact_search_matches_hand_computed_scores():
    cosines = np.linspace(0.0, 0.95, 20)  # 10th best is cosines[10]
    docs = _unit_2d(cosines)
    queries = np.array([[1.0, 0.0]])
    assert kth_neighbour_scores(doc_vecs=docs, query_vecs=queries, k=10)[0] == pytest.approx(
        cosines[10]
    )
    report = geometry_report(doc_vecs=docs, query_vecs=queries, topk_scores=None)
    assert report["tenth_neighbour_quantiles"]["q50"] == pytest.approx(cosines[10])
    assert report["query_norm_quantiles"]["q50"] == pytest.approx(1.0)


def test_topk_with_fewer_than_ten_columns_is_rejected():
    with pytest.raises(ValueError):
        geometry_report(doc_vecs=np.eye(3), query_vecs=None, topk_scores=np.ones((2, 5)))


def test_streamed_doc_geometry_is_exact_over_all_pairs_and_matches_the_report():
    rng = np.random.default_rng(3)
    docs = rng.normal(size=(300, 12)) + 0.5  # anisotropic: a shared offset
    docs[7] = 0.0  # a zero vector counts as a document with no direction
    queries = rng.normal(size=(9, 12))
    streamed = DocGeometry()
    for start in range(0, 300, 64):
        streamed.add(docs[start : start + 64])
    unit = docs / np.clip(np.linalg.norm(docs, axis=1, keepdims=True), 1e-12, None)
    cosines = unit @ unit.T
    all_pairs = (cosines.sum() - np.trace(cosines)) / (300 * 299)
    assert streamed.n_docs == 300
    assert streamed.mean_pair_cosine() == pytest.approx(all_pairs, abs=1e-12)
    # The sampled estimate geometry_report gives agrees within its sampling error.
    sampled = mean_random_pair_cosine(docs, sample_pairs=20000, seed=1)
    assert abs(sampled - all_pairs) < 0.02
    tenth = kth_neighbour_scores(doc_vecs=docs, query_vecs=queries, k=10)
    report = streamed.report(query_vecs=queries, tenth=tenth)
    reference = geometry_report(doc_vecs=docs, query_vecs=queries)
    for key in ("n_docs", "dimension", "doc_norm_quantiles", "query_norm_quantiles"):
        assert report[key] == reference[key], key
    assert report["tenth_neighbour_quantiles"] == reference["tenth_neighbour_quantiles"]
    assert report["pairs"] == "all" and report["n_queries"] == 9
    assert np.isnan(DocGeometry().mean_pair_cosine())
