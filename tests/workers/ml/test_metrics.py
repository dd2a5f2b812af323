"""workers.ml.metrics must reproduce trec_eval (pytrec_eval) exactly, ties and grades included."""

from __future__ import annotations

import math

import numpy as np
import pytest

from workers.ml.metrics import METRICS, evaluate_run, trec_ranking

pytrec_eval = pytest.importorskip("pytrec_eval")

# pytrec_eval measure -> our key; recip_rank is uncut there, so it is cut by hand below.
TREC = {
    "ndcg_cut_10": "ndcg@10",
    "recall_10": "recall@10",
    "recall_100": "recall@100",
    "map_cut_100": "map@100",
}


def _random_case(seed: int) -> tuple[dict, dict]:
    """Graded qrels (incl. 0 and -1 judgements, queries without relevant docs) and a run
    with many tied scores, doc ids whose string order differs from numeric order, runs
    longer than 100 and empty runs."""
    rng = np.random.default_rng(seed)
    docs = [f"d{i}" for i in range(300)]
    qrels, run = {}, {}
    for q in range(60):
        qid = f"q{q}"
        judged = rng.choice(len(docs), size=rng.integers(1, 25), replace=False)
        qrels[qid] = {docs[i]: int(rng.choice([-1, 0, 1, 1, 2])) for i in judged}
        size = int(rng.choice([0, 5, 30, 150]))
        retrieved = rng.choice(len(docs), size=size, replace=False)
        run[qid] = {docs[i]: float(rng.integers(0, 6)) / 4 for i in retrieved}
    run["only_in_run"] = {"d1": 1.0}
    qrels["only_in_qrels"] = {"d1": 1}
    return qrels, run


def _pytrec(qrels: dict, run: dict) -> dict[str, dict[str, float]]:
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {*TREC, "recip_rank"})
    raw = evaluator.evaluate(run)
    out = {}
    for qid, measures in raw.items():
        out[qid] = {ours: measures[theirs] for theirs, ours in TREC.items()}
        rr = measures["recip_rank"]
        out[qid]["mrr@10"] = rr if rr >= 0.1 - 1e-12 else 0.0  # first hit at rank <= 10
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_metric_equals_pytrec_eval_per_query_and_on_average(seed: int) -> None:
    qrels, run = _random_case(seed)
    expected = _pytrec(qrels, run)
    result = evaluate_run(qrels=qrels, run=run)
    assert set(result.per_query) == set(expected)
    for qid, measures in expected.items():
        for name, value in measures.items():
            assert result.per_query[qid][name] == pytest.approx(value, abs=1e-9), (qid, name)
    for name in METRICS:
        mean = sum(m[name] for m in expected.values()) / len(expected)
        assert result.aggregate[name] == pytest.approx(mean, abs=1e-9)
    assert 0 < result.aggregate["ndcg@10"] < 1  # the random case is not degenerate


def test_ties_are_ranked_by_document_id_descending() -> None:
    assert trec_ranking({"a": 1.0, "c": 1.0, "b": 1.0, "z": 0.5, "d": 2.0}) == [
        "d",
        "c",
        "b",
        "a",
        "z",
    ]
    # The only relevant doc "a" loses the tie to "b": rank 2, not 1.
    result = evaluate_run(qrels={"q": {"a": 1}}, run={"q": {"a": 1.0, "b": 1.0}})
    assert result.per_query["q"]["mrr@10"] == 0.5
    assert result.per_query["q"]["ndcg@10"] == pytest.approx(1 / math.log2(3))


def test_only_queries_in_both_run_and_qrels_are_averaged() -> None:
    qrels = {"hit": {"a": 1}, "empty": {"a": 1}, "missing": {"a": 1}}
    run = {"hit": {"a": 1.0}, "empty": {}, "stray": {"a": 1.0}}
    result = evaluate_run(qrels=qrels, run=run)
    assert set(result.per_query) == {"hit", "empty"}
    assert result.n_queries == 2
    assert result.per_query["empty"] == dict.fromkeys(METRICS, 0.0)
    assert result.aggregate == dict.fromkeys(METRICS, 0.5)


def test_graded_gains_reward_the_more_relevant_document_first() -> None:
    qrels = {"q": {"a": 2, "b": 1}}
    best = evaluate_run(qrels=qrels, run={"q": {"a": 2.0, "b": 1.0}})
    swapped = evaluate_run(qrels=qrels, run={"q": {"a": 1.0, "b": 2.0}})
    assert best.aggregate["ndcg@10"] == pytest.approx(1.0)
    assert swapped.aggregate["ndcg@10"] < 1.0
    assert swapped.aggregate["recall@10"] == best.aggregate["recall@10"] == 1.0


def test_no_common_query_gives_zero_aggregates() -> None:
    result = evaluate_run(qrels={"a": {"d": 1}}, run={"b": {"d": 1.0}})
    assert result.per_query == {}
    assert result.aggregate == dict.fromkeys(METRICS, 0.0)
