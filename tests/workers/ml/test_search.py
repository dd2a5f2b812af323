"""Exact blocked top-k (one matrix, or documents streamed in blocks) must equal a brute-force
stable argsort."""

from __future__ import annotations

import numpy as np
import pytest

from workers.ml.search import TopK, topk_cosine


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(queries: np.ndarray, docs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ docs.T
    idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(scores, idx, axis=1)


@pytest.mark.parametrize(("block", "k"), [(7, 5), (64, 10), (4096, 10), (16, 40)])
def test_blocked_topk_equals_brute_force(block: int, k: int) -> None:
    rng = np.random.default_rng(block)
    queries, docs = _unit(rng, 37, 24), _unit(rng, 211, 24)
    idx, scores = topk_cosine(queries, docs, k=k, block=block)
    want_idx, want_scores = _brute(queries, docs, k)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(scores, want_scores, atol=1e-6)


def test_equal_scores_are_ordered_by_document_row() -> None:
    # Integer vectors make every dot product exact, so duplicated documents tie exactly
    # whichever block computes them.
    rng = np.random.default_rng(3)
    base = rng.integers(-2, 3, size=(20, 8)).astype(np.float32)
    docs = np.concatenate([base, base, base])
    queries = rng.integers(-2, 3, size=(9, 8)).astype(np.float32)
    idx, _ = topk_cosine(queries, docs, k=12, block=5)
    np.testing.assert_array_equal(idx, _brute(queries, docs, 12)[0])


def test_excluded_rows_never_appear_and_the_rest_keeps_its_order() -> None:
    rng = np.random.default_rng(4)
    queries, docs = _unit(rng, 10, 16), _unit(rng, 50, 16)
    exclude = [{int(i) for i in rng.choice(50, size=5, replace=False)} for _ in range(10)]
    idx, scores = topk_cosine(queries, docs, k=8, exclude=exclude, block=9)
    full = queries @ docs.T
    for q in range(10):
        assert not set(idx[q]) & exclude[q]
        keep = [d for d in np.argsort(-full[q], kind="stable") if d not in exclude[q]]
        np.testing.assert_array_equal(idx[q], keep[:8])
        np.testing.assert_allclose(scores[q], full[q, keep[:8]], atol=1e-6)


def test_k_beyond_what_is_left_pads_with_minus_one() -> None:
    rng = np.random.default_rng(5)
    queries, docs = _unit(rng, 2, 8), _unit(rng, 4, 8)
    idx, scores = topk_cosine(queries, docs, k=10, exclude=[{0, 1}, set()], block=3)
    assert idx.shape == (2, 4)
    assert sorted(idx[0, :2]) == [2, 3] and list(idx[0, 2:]) == [-1, -1]
    assert np.isneginf(scores[0, 2:]).all()
    assert sorted(idx[1]) == [0, 1, 2, 3]


def test_exclude_must_have_one_entry_per_query() -> None:
    with pytest.raises(ValueError, match="exclude"):
        topk_cosine(np.zeros((2, 4)), np.zeros((3, 4)), k=1, exclude=[set()])


def _streamed(queries, docs, ids, *, k, rows, exclude=None, block=4096):
    top = TopK(queries, k=k, exclude=exclude, block=block)
    for start in range(0, len(docs), rows):
        top.add(docs[start : start + rows], ids[start : start + rows])
    return top.result()


@pytest.mark.parametrize(("rows", "block"), [(1, 4096), (7, 3), (64, 4096), (1000, 16)])
def test_streamed_blocks_give_exactly_the_one_matrix_result(rows: int, block: int) -> None:
    rng = np.random.default_rng(rows)
    queries, docs = _unit(rng, 23, 16), _unit(rng, 1000, 16)
    exclude = [{int(i) for i in rng.choice(1000, size=3, replace=False)} for _ in range(23)]
    want_idx, want_scores = topk_cosine(queries, docs, k=10, exclude=exclude)
    ids = np.arange(1000)
    idx, scores = _streamed(queries, docs, ids, k=10, rows=rows, exclude=exclude, block=block)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-6)


def test_streamed_ids_may_be_any_integers_and_ties_go_to_the_smaller_id() -> None:
    # Database ids: sparse and not starting at 0. Integer vectors tie exactly.
    rng = np.random.default_rng(8)
    base = rng.integers(-2, 3, size=(30, 6)).astype(np.float32)
    docs = np.concatenate([base, base])
    ids = np.concatenate([np.arange(1000, 1030) * 3, np.arange(5, 35) * 7])
    order = rng.permutation(60)  # blocks arrive in no particular id order
    queries = rng.integers(-2, 3, size=(5, 6)).astype(np.float32)
    idx, scores = _streamed(queries, docs[order], ids[order], k=12, rows=9)
    rows, want_scores = _brute(queries, docs, 60)
    # The brute-force order re-sorted by (score desc, id asc), then cut at k.
    for q in range(5):
        want = sorted(zip(-want_scores[q], ids[rows[q]], strict=True))[:12]
        assert [int(i) for i in idx[q]] == [int(i) for _, i in want]
        np.testing.assert_array_equal(scores[q], [-s for s, _ in want])


def test_streamed_exclusions_name_ids_and_fewer_documents_than_k_pad() -> None:
    rng = np.random.default_rng(9)
    queries, docs = _unit(rng, 2, 8), _unit(rng, 4, 8)
    ids = np.array([40, 10, 30, 20])
    idx, scores = _streamed(queries, docs, ids, k=10, rows=3, exclude=[{10, 30}, set()])
    assert idx.shape == (2, 4)
    assert sorted(idx[0, :2]) == [20, 40] and list(idx[0, 2:]) == [-1, -1]
    assert np.isneginf(scores[0, 2:]).all() and sorted(idx[1]) == [10, 20, 30, 40]
    with pytest.raises(ValueError, match="ids"):
        TopK(queries, k=2).add(docs, ids[:3])
