"""GASLITE on the real all-MiniLM-L6-v2 at small settings, plus the pure-numpy helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.ml.gaslite import (
    AttackConfig,
    Attacker,
    evaluate_passages,
    kmeans_targets,
    split_held_in_out,
)
from workers.ml.spec import default_model_path

# A real SciFact concept (vitamin D claims) and an unrelated adversary message.
CONCEPT = [
    "Vitamin D deficiency is associated with increased mortality.",
    "Vitamin D supplementation reduces the risk of fractures in older adults.",
    "Low vitamin D levels increase the risk of colorectal cancer.",
    "Vitamin D status is linked to multiple sclerosis risk.",
    "High dose vitamin D lowers blood pressure in hypertensive patients.",
    "Vitamin D receptor activation suppresses tumour growth.",
]
MESSAGE = "Visit BestShoes.com for cheap running shoes"
SMALL = AttackConfig(
    trigger_len=8,
    iterations=5,
    positions_per_iter=4,
    candidates_top=64,
    n_candidates=8,
    grad_copies=4,
    seed=0,
)


@pytest.fixture(scope="module")
def attacker() -> Attacker:
    torch.set_num_threads(2)
    return Attacker.from_path(default_model_path(), device="cpu")


@pytest.fixture(scope="module")
def target(attacker: Attacker) -> np.ndarray:
    return kmeans_targets(attacker.embed_texts(CONCEPT, kind="query"), n=1)[0]


@pytest.fixture(scope="module")
def result(attacker: Attacker, target: np.ndarray):
    seen: list[tuple[int, float]] = []
    res = attacker.attack(
        target=target,
        message=MESSAGE,
        config=SMALL,
        on_iteration=lambda i, c: seen.append((i, c)),
    )
    return res, seen


def test_attack_raises_cosine_and_curve_is_best_so_far(result):
    res, seen = result
    assert res.iterations_run == SMALL.iterations
    assert res.best_cosine > res.initial_cosine + 0.1
    assert res.objective_curve == sorted(res.objective_curve)
    assert res.objective_curve[-1] == pytest.approx(res.best_cosine)
    assert [i for i, _ in seen] == list(range(SMALL.iterations))


def test_passage_round_trips_through_the_tokenizer(attacker: Attacker, result):
    res, _ = result
    assert attacker.tokenizer(res.text, add_special_tokens=False)["input_ids"] == res.token_ids
    decoded = attacker.tokenizer.decode(res.token_ids, clean_up_tokenization_spaces=False)
    assert attacker.tokenizer(decoded, add_special_tokens=False)["input_ids"] == res.token_ids
    assert len(res.trigger_ids) == SMALL.trigger_len
    assert res.text.startswith(MESSAGE + ".")


def test_cosine_of_the_text_embedding_equals_the_reported_objective(attacker, target, result):
    res, _ = result
    vec = attacker.embed_texts([res.text])[0]
    assert float(vec @ target) == pytest.approx(res.best_cosine, abs=1e-4)


def test_attacked_passage_beats_message_only_on_held_in_queries(attacker, result):
    res, _ = result
    queries = attacker.embed_texts(CONCEPT, kind="query")
    attacked, message_only = attacker.embed_texts([res.text, MESSAGE])
    assert (queries @ attacked).mean() > (queries @ message_only).mean() + 0.1


def test_allowed_tokens_exclude_special_unused_non_ascii_and_continuations(attacker):
    tok = attacker.tokenizer
    allowed = attacker.allowed
    for special in tok.all_special_ids:
        assert not allowed[special]
    assert not allowed[tok.convert_tokens_to_ids("[unused1]")]
    assert not allowed[tok.convert_tokens_to_ids("##s")]
    assert allowed[tok.convert_tokens_to_ids("vitamin")]
    vocab = tok.convert_ids_to_tokens(torch.nonzero(allowed).squeeze(-1).tolist())
    assert all(t.isascii() and t.isprintable() for t in vocab)


def test_should_stop_ends_the_attack_after_the_current_iteration(attacker, target):
    calls: list[int] = []
    res = attacker.attack(
        target=target,
        message=MESSAGE,
        config=AttackConfig(**{**SMALL.__dict__, "iterations": 50}),
        on_iteration=lambda i, c: calls.append(i),
        should_stop=lambda: len(calls) >= 2,
    )
    assert res.iterations_run == 2
    assert res.best_cosine >= res.initial_cosine


def test_dummy_init_starts_from_exclamation_marks(attacker, target):
    cfg = AttackConfig(**{**SMALL.__dict__, "iterations": 0, "init": "dummy"})
    res = attacker.attack(target=target, message=MESSAGE, config=cfg)
    bang = attacker.tokenizer.convert_tokens_to_ids("!")
    assert res.trigger_ids == [bang] * SMALL.trigger_len
    assert attacker.tokenizer(res.text, add_special_tokens=False)["input_ids"] == res.token_ids
    assert res.best_cosine == res.initial_cosine
    assert res.objective_curve == []


def test_too_long_passage_is_rejected(attacker, target):
    with pytest.raises(ValueError, match="tokens"):
        attacker.attack(target=target, message=MESSAGE, config=AttackConfig(trigger_len=300))


def test_split_is_disjoint_complete_and_seeded():
    ids = list(range(21))
    held_in, held_out = split_held_in_out(ids, held_in=0.5, seed=3)
    assert sorted(held_in + held_out) == ids
    assert len(held_in) == 10 or len(held_in) == 11
    assert split_held_in_out(ids, seed=3) == (held_in, held_out)
    assert split_held_in_out(ids, seed=4) != (held_in, held_out)


def test_kmeans_centroids_are_unit_norm_and_one_cluster_is_the_mean():
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(40, 16))
    cents = kmeans_targets(vecs, n=4, seed=0)
    assert cents.shape == (4, 16)
    np.testing.assert_allclose(np.linalg.norm(cents, axis=1), 1.0, atol=1e-5)
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    mean = unit.mean(axis=0) / np.linalg.norm(unit.mean(axis=0))
    np.testing.assert_allclose(kmeans_targets(vecs, n=1)[0], mean, atol=1e-5)
    with pytest.raises(ValueError):
        kmeans_targets(vecs, n=41)


def test_evaluate_passages_ranks_against_the_real_topk():
    # Two queries in 2-D; real top-k scores are hand-made, descending, depth 100.
    queries = np.array([[1.0, 0.0], [0.0, 1.0]])
    passages = np.array([[0.8, 0.0], [0.0, 0.3]])  # query 0 best 0.8, query 1 best 0.3
    topk = np.stack([np.linspace(0.9, 0.0, 100), np.linspace(0.9, 0.0, 100)])
    out = evaluate_passages(passage_vecs=passages, query_vecs=queries, topk_scores=topk)
    # query 0: real scores >= 0.8 are 0.9..0.809 (12 of them) -> rank 13
    # query 1: real scores >= 0.3 -> 67 of them -> rank 68
    expected = [1 + int((topk[0] >= 0.8).sum()), 1 + int((topk[1] >= 0.3).sum())]
    assert out["best_ranks"] == expected == [13, 68]
    assert out["appeared@10"] == 0.0
    assert out["appeared@20"] == 0.5
    assert out["appeared@100"] == 1.0
    assert out["mrr@10"] == 0.0
    assert out["mean_best_rank"] == pytest.approx((13 + 68) / 2)


def test_evaluate_passages_ties_lose_and_misses_are_capped():
    queries = np.array([[1.0, 0.0], [1.0, 0.0]])
    topk = np.array([[0.5, 0.4, 0.3], [0.5, 0.4, 0.3]])
    tie = evaluate_passages(
        passage_vecs=np.array([[0.5, 0.0]]), query_vecs=queries, topk_scores=topk, ks=(1, 3)
    )
    assert tie["best_ranks"] == [2, 2]  # equal to the top score is not a win
    assert tie["appeared@1"] == 0.0 and tie["appeared@3"] == 1.0
    assert tie["mrr@10"] == pytest.approx(0.5)
    miss = evaluate_passages(
        passage_vecs=np.array([[0.1, 0.0]]), query_vecs=queries, topk_scores=topk, ks=(1, 3)
    )
    assert miss["best_ranks"] == [4, 4]  # depth + 1
    assert miss["mean_best_rank"] == 4.0
    top = evaluate_passages(
        passage_vecs=np.array([[0.9, 0.0], [0.1, 0.0]]), query_vecs=queries, topk_scores=topk
    )
    assert top["best_ranks"] == [1, 1] and top["mrr@10"] == 1.0
