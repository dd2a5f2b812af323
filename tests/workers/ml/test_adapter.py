"""The compensation adapter's math on synthetic pairs: what it recovers, what it chooses."""

import numpy as np
import pytest

from workers.ml.adapter import (
    Adapter,
    CorpusPairs,
    RetrievalProbe,
    chain,
    fit_adapter,
    fit_corpus_adapter,
    fit_procrustes,
    fit_ranking_map,
    fit_ridge,
    identity,
    mean_cosine,
    neighbour_overlap,
    normalize,
    probe_mrr,
    probe_ndcg,
    reindex_fidelity,
)


def _unit(rng, n, d):
    return normalize(rng.normal(size=(n, d)))


def _rotation(rng, d):
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return q


def test_procrustes_recovers_a_known_rotation():
    rng = np.random.default_rng(0)
    x = _unit(rng, 200, 16)
    rotation = _rotation(rng, 16)
    fitted = fit_procrustes(x, x @ rotation)
    assert np.allclose(fitted.weight, rotation, atol=1e-5)
    assert np.allclose(fitted.weight @ fitted.weight.T, np.eye(16), atol=1e-5)
    assert np.allclose(fitted.apply(x), normalize(x @ rotation), atol=1e-5)


def test_fit_adapter_chooses_ridge_for_a_non_orthogonal_map():
    rng = np.random.default_rng(1)
    d = 24
    x = _unit(rng, 600, d)
    # A shear plus a shift: no rotation can reproduce it.
    mix = np.eye(d) + 0.6 * rng.normal(size=(d, d)) / np.sqrt(d)
    y = normalize(x @ mix + 0.3 * rng.normal(size=d)) + 0.01 * rng.normal(size=(600, d))
    adapter = fit_adapter(x, y, seed=0)
    table = adapter.scores["candidates"]
    best_ridge = max(v["cosine"] for k, v in table.items() if k.startswith("ridge@"))
    assert adapter.method == "ridge" and adapter.ridge_lambda is not None
    assert best_ridge > table["procrustes"]["cosine"] > table["identity"]["cosine"]
    assert adapter.scores["held_out_cosine"] == best_ridge
    assert adapter.scores["held_out_overlap@10"] >= table["procrustes"]["overlap@10"]
    assert adapter.scores["pairs"] == 600 and adapter.scores["held_out_pairs"] == 120


def test_fit_adapter_chooses_procrustes_for_a_noisy_rotation_with_few_pairs():
    rng = np.random.default_rng(2)
    d = 32
    x = _unit(rng, 40, d)  # fewer pairs than a free affine map has parameters per output
    rotation = _rotation(rng, d)
    y = normalize(x @ rotation + 0.05 * rng.normal(size=(40, d)))
    adapter = fit_adapter(x, y, lambdas=(1e-4,), seed=0)
    assert adapter.method == "procrustes"
    # Refitted on every pair it fits them about as well as the true rotation does.
    assert mean_cosine(adapter.map(x), y) > mean_cosine(x @ rotation, y) - 0.01


def test_ridge_pulls_towards_the_identity_not_to_zero():
    rng = np.random.default_rng(3)
    x = _unit(rng, 5, 16)
    heavy = fit_ridge(x, x[::-1], ridge_lambda=1e6)
    assert np.allclose(heavy.weight, np.eye(16), atol=1e-3)


def test_chain_equals_applying_in_sequence():
    rng = np.random.default_rng(4)
    d = 12
    x = _unit(rng, 50, d)
    first = fit_ridge(x, normalize(x @ _rotation(rng, d) + 0.2), ridge_lambda=0.1)
    second = fit_ridge(x, normalize(x @ _rotation(rng, d) - 0.1), ridge_lambda=0.1)
    composed = chain([first, second])
    assert np.allclose(composed.map(x), second.map(first.map(x)), atol=1e-4)
    assert np.allclose(composed.apply(x), normalize(second.map(first.map(x))), atol=1e-5)
    # Rotations have no bias, so even normalising in between gives the same result.
    r1, r2 = fit_procrustes(x, x @ _rotation(rng, d)), fit_procrustes(x, x @ _rotation(rng, d))
    assert np.allclose(chain([r1, r2]).apply(x), r2.apply(r1.apply(x)), atol=1e-5)
    assert chain([first]).method == "ridge"


def test_adapter_round_trips_through_bytes():
    rng = np.random.default_rng(5)
    x = _unit(rng, 30, 8)
    adapter = fit_ridge(x, x, ridge_lambda=1.0)
    again = Adapter.from_bytes(adapter.to_bytes())
    assert np.array_equal(again.weight, adapter.weight) and np.array_equal(again.bias, adapter.bias)


def test_neighbour_overlap_is_one_for_the_truth_and_low_for_noise():
    rng = np.random.default_rng(6)
    pool = _unit(rng, 100, 16)
    y = pool[:20]
    assert neighbour_overlap(y, y, pool, k=10) == 1.0
    assert neighbour_overlap(_unit(rng, 20, 16), y, pool, k=10) < 0.5


def test_bad_pairs_are_refused():
    with pytest.raises(ValueError, match="two"):
        fit_adapter(np.zeros((1, 4)), np.zeros((1, 4)))
    with pytest.raises(ValueError, match="matrices"):
        fit_procrustes(np.zeros((3, 4)), np.zeros((3, 5)))


def test_a_retrieval_probe_prefers_aligning_documents_over_undoing_the_query_drift():
    rng = np.random.default_rng(7)
    d, n_docs, n_queries = 32, 300, 300
    docs_rotation, queries_rotation = _rotation(rng, d), _rotation(rng, d)
    docs = _unit(rng, n_docs, d)  # child document vectors; the parent's are a rotation
    queries = _unit(rng, n_queries, d)
    x = np.concatenate([queries, docs])
    # The fine-tune moved the queries in a way of their own: pairs of queries pull the map
    # towards undoing it, which a probe of judged queries shows to hurt retrieval.
    y = np.concatenate([queries @ queries_rotation, docs @ docs_rotation])
    is_query = np.arange(len(x)) < n_queries
    relevant = rng.permutation(n_docs)[:40]
    probe = RetrievalProbe(
        queries=normalize(docs[relevant] + 0.2 * rng.normal(size=(40, d))),
        positives=[[int(r)] for r in relevant],
        pool=docs @ docs_rotation,
    )
    adapter = fit_adapter(x, y, is_query=is_query, probe=probe, seed=0)
    table = adapter.scores["candidates"]
    assert adapter.scores["fitted_on"] == "documents"
    assert adapter.scores["probe_mrr@10"] > table["procrustes"]["probe_mrr@10"] + 0.2
    assert adapter.scores["identity_probe_mrr@10"] < 0.2
    assert probe_mrr(adapter, probe) >= adapter.scores["probe_mrr@10"] - 0.05
    # Without a probe the choice is by held-out cosine, over maps fitted on every pair.
    plain = fit_adapter(x, y, is_query=is_query, seed=0)
    assert plain.scores["fitted_on"] == "all" and "probe_mrr@10" not in plain.scores


def _drifted_corpus(rng, *, d=16, n_docs=400, n_queries=200):
    """A child that moved its documents by a modest rotation, as a fine-tune does (the
    index holds the parent's)."""
    child_docs = _unit(rng, n_docs, d)
    rotation, _ = np.linalg.qr(np.eye(d) + 0.25 * rng.normal(size=(d, d)))
    child_queries = normalize(child_docs[:n_queries] + 0.3 * rng.normal(size=(n_queries, d)))
    return child_docs, child_docs @ rotation, child_queries, rotation


def test_a_ranking_map_makes_the_old_index_rank_like_a_reindex():
    rng = np.random.default_rng(11)
    child_docs, parent_docs, queries, _ = _drifted_corpus(rng)
    fitted = fit_ranking_map(
        queries=queries, parent_docs=parent_docs, child_docs=child_docs, steps=300, lr=3e-2
    )
    kwargs = {"queries": queries, "parent_docs": parent_docs, "child_docs": child_docs}
    assert reindex_fidelity(fitted, **kwargs) > 0.75
    assert reindex_fidelity(identity(16), **kwargs) < 0.3
    # Unit-length outputs on average, so a blend with another map mixes like with like.
    assert np.mean(np.linalg.norm(queries @ fitted.weight, axis=1)) == pytest.approx(1, abs=1e-4)


def test_a_corpus_adapter_blends_towards_the_parent_where_the_probe_finds_it_better():
    rng = np.random.default_rng(12)
    child_docs, parent_docs, queries, rotation = _drifted_corpus(rng, n_queries=100)
    # The parent's own queries: the child moved them its own way (a map the query side
    # can learn), and on an old task the parent's ranking is the right one.
    parent_queries = normalize(queries @ _rotation(rng, 16))
    pairs = CorpusPairs(
        child_docs=child_docs,
        parent_docs=parent_docs,
        child_queries=queries,
        parent_queries=parent_queries,
    )
    # Judged against the parent's view: the parent's query finds its documents.
    relevant = [int(i) for i in np.argmax(parent_queries[:40] @ parent_docs.T, axis=1)]
    probe = RetrievalProbe(
        queries=queries[:40], positives=[[r] for r in relevant], pool=parent_docs
    )
    old_task = fit_corpus_adapter(pairs, probe=probe, seed=0)
    assert old_task.scores["document_weight"] < 0.5
    ndcg = old_task.scores["probe_ndcg@10"]
    assert ndcg["0"] > ndcg["1"] and old_task.scores["probe_queries"] == 40
    assert old_task.scores["blend_chosen_by"] == "probe"
    # No probe: the caller's side alone. The ranking map on the fine-tune's own task...
    alone = fit_corpus_adapter(pairs, seed=0)
    assert alone.scores["chosen"] == "blend@1" and "probe_ndcg@10" not in alone.scores
    assert alone.scores["blend_chosen_by"] == "task"
    # ...and on an old task the query map, which ranks as the parent's own queries did.
    parent_like = fit_corpus_adapter(pairs, unprobed_weight=0.0, seed=0)
    assert parent_like.scores["chosen"] == "blend@0"
    assert probe_ndcg(parent_like, probe) == pytest.approx(ndcg["0"], abs=1e-6)
    assert probe_ndcg(parent_like, probe) > probe_ndcg(alone, probe)
    with pytest.raises(ValueError, match="two"):
        fit_corpus_adapter(
            CorpusPairs(child_docs[:1], parent_docs[:1], queries, parent_queries), seed=0
        )


def test_a_corpus_adapter_without_child_documents_is_the_query_map_alone():
    rng = np.random.default_rng(13)
    _, parent_docs, queries, _ = _drifted_corpus(rng, n_queries=60)
    parent_queries = normalize(queries @ _rotation(rng, 16))
    pairs = CorpusPairs(None, parent_docs, queries, parent_queries)
    # An old task with no probe: the documents are never needed, so none are computed.
    alone = fit_corpus_adapter(pairs, unprobed_weight=0.0, seed=0)
    full = fit_corpus_adapter(
        CorpusPairs(parent_docs, parent_docs, queries, parent_queries), unprobed_weight=0.0
    )
    assert alone.scores["ranking_map"] is None and alone.scores["documents"] == 0
    np.testing.assert_allclose(alone.weight, full.weight, atol=1e-6)
    # Where the ranking map is used, documents are required.
    with pytest.raises(ValueError, match="two documents"):
        fit_corpus_adapter(pairs, unprobed_weight=1.0, seed=0)
