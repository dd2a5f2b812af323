"""Retrieval metrics with exactly trec_eval's semantics (as pytrec_eval computes them).

Why re-implement rather than call pytrec_eval: it is a C extension we only want as a dev
dependency (tests pin this module against it to 1e-9), and the platform must evaluate
without it.

trec_eval conventions reproduced here:
- a run is ranked by score descending, ties broken by document id descending (string order);
- relevance >= 1 is relevant for recall / MRR / MAP; nDCG uses the graded relevance as the
  gain (negative judgements count as 0);
- the ideal DCG is built from every judged document of the query, not only retrieved ones;
- a query with no relevant document scores 0 on every metric.

Which queries are averaged (the BEIR / pytrec_eval convention): those that are keys of both
`qrels` and `run`. A query in the run but not in the qrels is ignored; a query in the
qrels but absent from the run is ignored; a query present in the run with an empty ranking
is kept and scores 0. Callers that want missing queries to count as failures should put
them in the run with an empty dict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

METRICS: tuple[str, ...] = ("ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100")


@dataclass(frozen=True)
class EvalResult:
    aggregate: dict[str, float]
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def n_queries(self) -> int:
        return len(self.per_query)


def trec_ranking(scores: Mapping[str, float]) -> list[str]:
    """Document ids in trec_eval order: score descending, then document id descending."""
    return sorted(scores, key=lambda doc: (scores[doc], doc), reverse=True)


def _dcg(gains: list[float]) -> float:
    return sum(g / math.log2(rank + 2) for rank, g in enumerate(gains))


def _ndcg(ranked: list[str], judged: Mapping[str, int], *, k: int) -> float:
    ideal = _dcg(sorted((max(r, 0) for r in judged.values()), reverse=True)[:k])
    if ideal <= 0:
        return 0.0
    return _dcg([max(judged.get(doc, 0), 0) for doc in ranked[:k]]) / ideal


def _recall(hits: list[bool], num_rel: int, *, k: int) -> float:
    return sum(hits[:k]) / num_rel if num_rel else 0.0


def _mrr(hits: list[bool], *, k: int) -> float:
    return next((1.0 / (rank + 1) for rank, hit in enumerate(hits[:k]) if hit), 0.0)


def _average_precision(hits: list[bool], num_rel: int, *, k: int) -> float:
    if not num_rel:
        return 0.0
    found, total = 0, 0.0
    for rank, hit in enumerate(hits[:k]):
        if hit:
            found += 1
            total += found / (rank + 1)
    return total / num_rel


def score_query(*, judged: Mapping[str, int], scores: Mapping[str, float]) -> dict[str, float]:
    """All METRICS for one query: `judged` is its qrels, `scores` its run."""
    ranked = trec_ranking(scores)
    hits = [judged.get(doc, 0) >= 1 for doc in ranked]
    num_rel = sum(1 for rel in judged.values() if rel >= 1)
    return {
        "ndcg@10": _ndcg(ranked, judged, k=10),
        "recall@10": _recall(hits, num_rel, k=10),
        "recall@100": _recall(hits, num_rel, k=100),
        "mrr@10": _mrr(hits, k=10),
        "map@100": _average_precision(hits, num_rel, k=100),
    }


def evaluate_run(
    *, qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]
) -> EvalResult:
    """Score a run against qrels; see the module docstring for which queries are averaged.

    With no query in common every aggregate is 0.0 and `per_query` is empty.
    """
    per_query = {
        qid: score_query(judged=qrels[qid], scores=run[qid]) for qid in run if qid in qrels
    }
    n = len(per_query)
    aggregate = {
        name: (sum(q[name] for q in per_query.values()) / n if n else 0.0) for name in METRICS
    }
    return EvalResult(aggregate=aggregate, per_query=per_query)
