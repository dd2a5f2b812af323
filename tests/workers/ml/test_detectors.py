"""Adversarial-passage detectors on synthetic corpora: gibberish scores above corpus-like
text, hubs above ordinary documents, and the calibrated threshold keeps its false-positive
rate on clean documents it never saw."""

from __future__ import annotations

import numpy as np
import pytest

from workers.ml.detectors import (
    COMBINED,
    CharNgram,
    Screen,
    hub_bar,
    hub_reference,
    hubness,
    recall_report,
    screen_fit,
    symbol_density,
    threshold_at_fpr,
    wordpiece_share,
)

TOPICS = {
    "bone": "vitamin calcium bone density fracture elderly supplementation serum level",
    "heart": "blood pressure artery cholesterol statin heart attack risk cardiac",
    "sugar": "insulin glucose diabetes metformin resistance liver pancreas sugar",
}
GLUE = ["the", "of", "in", "and", "was", "with", "patients", "a", "to", "is", "were", "that"]


def _corpus(n: int, seed: int = 0) -> list[str]:
    """Sentences mixing a topic's words with function words, like abstracts in miniature."""
    rng = np.random.default_rng(seed)
    topics = [t.split() for t in TOPICS.values()]
    docs = []
    for _ in range(n):
        topic = topics[rng.integers(len(topics))]
        length = int(rng.integers(20, 60))
        words = [
            topic[rng.integers(len(topic))] if rng.random() < 0.5 else GLUE[rng.integers(len(GLUE))]
            for _ in range(length)
        ]
        docs.append(" ".join(words) + ".")
    return docs


def _gibberish(n: int, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    alphabet = list("qxzjkvwy#@|~^") + ["##ly", "##zz", "!"]
    out = []
    for _ in range(n):
        tokens = ["".join(rng.choice(alphabet, size=int(rng.integers(2, 7)))) for _ in range(20)]
        out.append("Visit BestShoes.com for cheap shoes. " + " ".join(tokens))
    return out


def test_gibberish_scores_higher_than_corpus_like_text_on_every_text_feature():
    screen = screen_fit(_corpus(400), fpr=0.01, seed=0)
    clean = screen.language.features(_corpus(50, seed=7))
    odd = screen.language.features(_gibberish(50))
    for name in clean:
        assert np.median(odd[name]) > np.median(clean[name]), name
    assert screen.flags(_gibberish(50)).mean() >= 0.95
    assert screen.flags(_corpus(200, seed=9)).mean() <= 0.05


def test_threshold_keeps_the_requested_false_positive_rate_on_held_out_clean_documents():
    docs = _corpus(1200, seed=3)
    screen = screen_fit(docs, fpr=0.05, seed=0, fit_share=0.4, test_share=0.0)
    unseen = _corpus(2000, seed=11)  # never used to fit or calibrate
    rate = float(screen.flags(unseen).mean())
    assert 0.01 <= rate <= 0.09, rate
    # The held-out share inside screen_fit reports the same kind of rate.
    tested = screen_fit(docs, fpr=0.05, seed=0, fit_share=0.4, test_share=0.3)
    assert tested.heldout_fpr is not None and tested.heldout_fpr <= 0.1


def test_threshold_at_fpr_is_the_conformal_order_statistic():
    clean = np.arange(100, dtype=float)  # 0..99
    assert threshold_at_fpr(clean, 0.05) == 95.0  # ceil(101 * 0.95) = 96th smallest
    assert np.mean(clean > threshold_at_fpr(clean, 0.05)) <= 0.05
    # Too few documents for 1 %: the largest clean score, so no clean document is flagged.
    assert threshold_at_fpr(np.array([0.0, 1.0, 2.0]), 0.01) == 2.0
    with pytest.raises(ValueError):
        threshold_at_fpr(clean, 0.0)


def test_ties_at_zero_stay_clean():
    clean = np.zeros(500)
    bar = threshold_at_fpr(clean, 0.01)
    assert not (clean > bar).any() and (np.array([1.0]) > bar).all()


def test_char_ngram_prefers_text_like_its_corpus():
    model = CharNgram(order=4, buckets=1 << 16).fit(_corpus(200))
    natural = model.bits_per_char(_corpus(1, seed=5)[0])
    odd = model.bits_per_char(_gibberish(1)[0])
    assert natural < odd
    assert model.bits_per_char("") == 0.0


def test_symbol_and_wordpiece_shares():
    assert symbol_density("abc def") == 0.0
    assert symbol_density("a|b") == pytest.approx(1 / 3)
    assert wordpiece_share(["play", "##ing", "now"]) == pytest.approx(1 / 3)
    assert wordpiece_share([]) == 0.0


def test_hubness_counts_queries_whose_top_k_the_vector_enters():
    rng = np.random.default_rng(0)
    concept = rng.normal(size=8)
    queries = np.vstack([concept + 0.5 * rng.normal(size=(20, 8)), rng.normal(size=(10, 8))])
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    docs = rng.normal(size=(200, 8)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    kth = -np.sort(-(queries @ docs.T), axis=1)[:, 9]  # float32, as hub_reference's
    hub = queries[:20].mean(axis=0)
    hub /= np.linalg.norm(hub)
    counts = hubness(docs, query_vecs=queries, kth_scores=kth, in_index=True)
    assert counts.sum() == 30 * 10  # every query's top 10, exactly once each
    assert hubness(hub, query_vecs=queries, kth_scores=kth)[0] > np.quantile(counts, 0.99)


def test_hub_reference_streamed_in_blocks_matches_the_whole_matrix():
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(30, 16))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    docs = rng.normal(size=(500, 16)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    scores = queries.astype(np.float32) @ docs.T
    kth = -np.sort(-scores, axis=1)[:, 9]
    top10 = np.argsort(-scores, axis=1)[:, :10]
    whole = np.bincount(top10.ravel(), minlength=len(docs)).astype(float)
    for size in (1, 7, 64, 500):
        blocks = (docs[i : i + size] for i in range(0, len(docs), size))
        ref = hub_reference(queries, blocks, k=10)
        assert np.allclose(ref.kth_scores, kth, atol=1e-6)
        assert np.array_equal(ref.clean_hubness, whole)
        assert ref.n_clean == 500 and ref.clean_hubness.sum() == 30 * 10


def test_hubness_against_the_reference_it_came_from_counts_only_the_vectors_above_the_kth():
    # hub_reference's k-th scores are float32: scoring in float64 would have a vector that
    # is itself a query's k-th beat its own (rounded) score about half the time.
    rng = np.random.default_rng(2)
    docs = rng.normal(size=(3000, 64)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    queries = rng.normal(size=(200, 64)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ref = hub_reference(queries, (docs[i : i + 512] for i in range(0, 3000, 512)), k=10)
    kth = ref.kth_scores
    assert hubness(docs, query_vecs=queries, kth_scores=kth).sum() == 200 * 9
    inside = hubness(docs, query_vecs=queries, kth_scores=kth, in_index=True)
    assert np.array_equal(inside, ref.clean_hubness)


def test_hub_reference_with_fewer_vectors_than_k_leaves_the_kth_score_open():
    ref = hub_reference(np.eye(3), [np.eye(3)[:2]], k=10)
    assert np.all(np.isneginf(ref.kth_scores)) and ref.clean_hubness.tolist() == [3, 3]


def test_hub_bar_is_the_clean_rate_and_never_flags_a_passage_no_query_ranks():
    clean = np.zeros(1000)
    clean[:5] = 1.0  # 0.5 % of clean documents are in some top 10: below the 1 % rate
    bar = hub_bar(clean, fpr=0.01)
    assert bar.threshold == 0.0
    assert bar.flags(np.array([0.0, 1.0])).tolist() == [False, True]
    assert hub_bar(clean, fpr=0.01, floor=2.0).flags(np.array([2.0, 3.0])).tolist() == [
        False,
        True,
    ]
    spread = np.random.default_rng(0).poisson(2.0, size=2000).astype(float)
    bar = hub_bar(spread, fpr=0.01)
    assert np.mean(bar.flags(spread)) <= 0.01
    assert bar.z(np.array([bar.median]))[0] == 0.0 and bar.z(np.array([20.0]))[0] > 3


def test_extra_features_are_calibrated_and_reported_with_the_text_ones():
    docs = _corpus(300)
    hub = np.random.default_rng(0).poisson(1.0, size=len(docs)).astype(float)
    screen = screen_fit(docs, fpr=0.01, extra={"hubness": hub})
    assert "hubness" in screen.calibration.features
    attack = screen.features(_corpus(5, seed=2), extra={"hubness": np.full(5, 40.0)})
    assert screen.calibration.combined(attack).min() > screen.calibration.threshold
    clean = screen.features(docs[:100], extra={"hubness": hub[:100]})
    report = recall_report(clean=clean, attack=attack, calibration=screen.calibration)
    assert report["0.01"]["hubness"]["recall"] == 1.0
    assert report["0.01"][COMBINED]["recall"] == 1.0
    assert report["0.05"]["char_perplexity"]["clean_fpr"] <= 0.05


def test_screen_round_trips_through_bytes():
    screen = screen_fit(_corpus(200), fpr=0.01)
    again = Screen.from_bytes(screen.to_bytes())
    texts = _corpus(10, seed=4) + _gibberish(5)
    assert np.allclose(screen.scores(texts), again.scores(texts))
    assert again.calibration.threshold == screen.calibration.threshold
    assert again.language.knows("insulin") and not again.language.knows("qxzj")


def test_naturalness_penalty_is_zero_for_typical_text_and_large_for_gibberish():
    screen = screen_fit(_corpus(300), fpr=0.01)
    typical = screen.naturalness_penalty(_corpus(20, seed=6))
    odd = screen.naturalness_penalty(_gibberish(20))
    assert np.median(typical) < 1.5 < np.min(odd)
