"""A learned compensation adapter: a linear map from a child version's space to its parent's.

After Drift-Adapter (EMNLP 2025) and BCT: where QDC shifts every query by one mean vector Δ,
the adapter fits a map A on paired vectors (x = f_child(t), y = f_parent(t)) of the child's
training queries and a sample of the indexed documents, so that normalize(A(f_child(q)))
can search an index the parent built. Two families, chosen on a held-out split:

- orthogonal Procrustes: W = U Vᵀ from the SVD of XᵀY; a rotation, so it keeps every angle
  between child vectors and cannot overfit a small pair set;
- ridge-regularised affine: y ≈ xW + b with ‖W − I‖² penalised (λ chosen on the held-out
  split). The penalty pulls towards the identity, not zero: with fewer pairs than dimensions
  a zero-shrunk map collapses everything, while "no drift" is the natural prior.

Pure numpy; the map is applied row-wise as x @ W + b, then L2-normalised.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

METHODS = ("procrustes", "ridge")
RIDGE_LAMBDAS = (0.01, 0.1, 1.0, 10.0, 100.0)
HELD_OUT_FRACTION = 0.2
NEIGHBOUR_K = 10


@dataclass
class Adapter:
    """x ↦ normalize(x @ weight + bias); `scores` are the held-out numbers it was chosen by."""

    weight: np.ndarray  # (d, d)
    bias: np.ndarray  # (d,), zero for Procrustes
    method: str
    ridge_lambda: float | None = None
    scores: dict = field(default_factory=dict)

    @property
    def dimension(self) -> int:
        return int(self.weight.shape[0])

    def map(self, x: np.ndarray) -> np.ndarray:
        """The affine map without normalisation (what composes exactly)."""
        return np.asarray(x, dtype=np.float32) @ self.weight + self.bias

    def apply(self, x: np.ndarray) -> np.ndarray:
        return normalize(self.map(x))

    def then(self, nxt: Adapter) -> Adapter:
        """self followed by `nxt` as one map: (xW₁ + b₁)W₂ + b₂ = x(W₁W₂) + (b₁W₂ + b₂)."""
        return Adapter(
            weight=(self.weight @ nxt.weight).astype(np.float32),
            bias=(self.bias @ nxt.weight + nxt.bias).astype(np.float32),
            method=f"{self.method}+{nxt.method}",
        )

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, weight=self.weight, bias=self.bias)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, raw: bytes, *, method: str = "stored") -> Adapter:
        with np.load(io.BytesIO(raw)) as data:
            return cls(
                weight=data["weight"].astype(np.float32),
                bias=data["bias"].astype(np.float32),
                method=method,
            )


def normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    # A zero vector has no direction; leave it at zero rather than produce NaNs.
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def identity(dimension: int) -> Adapter:
    return Adapter(
        weight=np.eye(dimension, dtype=np.float32),
        bias=np.zeros(dimension, dtype=np.float32),
        method="identity",
    )


def chain(adapters: Sequence[Adapter]) -> Adapter:
    """One map for the path T → T−1 → … → k, given the adapters of T, T−1, …, k+1 in that
    order (each maps a version's space to its parent's)."""
    if not adapters:
        raise ValueError("chain needs at least one adapter")
    composed = adapters[0]
    for nxt in adapters[1:]:
        composed = composed.then(nxt)
    return composed


# --------------------------------------------------------------------------- fitting


def fit_procrustes(x: np.ndarray, y: np.ndarray) -> Adapter:
    """The rotation W minimising ‖XW − Y‖ (Schönemann 1966)."""
    x64, y64 = _pair(x, y)
    u, _, vt = np.linalg.svd(x64.T @ y64)
    return Adapter(
        weight=(u @ vt).astype(np.float32),
        bias=np.zeros(x64.shape[1], dtype=np.float32),
        method="procrustes",
    )


def fit_ridge(x: np.ndarray, y: np.ndarray, *, ridge_lambda: float) -> Adapter:
    """argmin ‖XW + 1b − Y‖² + λ‖W − I‖², closed form on centred data (b is not penalised)."""
    x64, y64 = _pair(x, y)
    mx, my = x64.mean(axis=0), y64.mean(axis=0)
    xc, yc = x64 - mx, y64 - my
    d = x64.shape[1]
    eye = np.eye(d)
    # The normal equations with the identity prior: (XᵀX + λI) W = XᵀY + λI.
    weight = np.linalg.solve(xc.T @ xc + ridge_lambda * eye, xc.T @ yc + ridge_lambda * eye)
    return Adapter(
        weight=weight.astype(np.float32),
        bias=(my - mx @ weight).astype(np.float32),
        method="ridge",
        ridge_lambda=float(ridge_lambda),
    )


def _pair(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x64, y64 = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x64.ndim != 2 or x64.shape != y64.shape:
        raise ValueError(
            f"paired vectors must be two (n, d) matrices, got {x64.shape}, {y64.shape}"
        )
    if len(x64) == 0:
        raise ValueError("no paired vectors to fit an adapter on")
    return x64, y64


# --------------------------------------------------------------------------- scoring


def mean_cosine(mapped: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.sum(normalize(mapped) * normalize(y), axis=1)))


def neighbour_overlap(mapped: np.ndarray, y: np.ndarray, pool: np.ndarray, *, k: int) -> float:
    """Mean fraction of y's k nearest neighbours in `pool` that normalize(mapped) also
    ranks in its top k: how much of the parent's ranking the mapped vectors reproduce."""
    k = min(k, len(pool))
    if k == 0:
        return 0.0
    pool_n = normalize(pool)
    got = np.argsort(-(normalize(mapped) @ pool_n.T), axis=1)[:, :k]
    want = np.argsort(-(normalize(y) @ pool_n.T), axis=1)[:, :k]
    hits = [len(set(g.tolist()) & set(w.tolist())) for g, w in zip(got, want, strict=True)]
    return float(np.mean(hits) / k)


def _score(adapter: Adapter, x: np.ndarray, y: np.ndarray, pool: np.ndarray) -> dict:
    mapped = adapter.map(x)
    return {
        "cosine": round(mean_cosine(mapped, y), 6),
        f"overlap@{NEIGHBOUR_K}": round(neighbour_overlap(mapped, y, pool, k=NEIGHBOUR_K), 6),
    }


# --------------------------------------------------------------------------- choosing


def held_out_split(n: int, *, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows), fixed by the seed; at least one row on each side."""
    if n < 2:
        raise ValueError("an adapter needs at least two paired vectors (one held out)")
    order = np.random.default_rng(seed).permutation(n)
    n_held = min(n - 1, max(1, int(round(fraction * n))))
    return np.sort(order[n_held:]), np.sort(order[:n_held])


@dataclass(frozen=True)
class RetrievalProbe:
    """Judged queries the adapter is not fitted on: their child vectors, and for each the
    rows of `pool` (parent document vectors, as the index holds them) that are relevant."""

    queries: np.ndarray  # (m, d) child vectors
    positives: list[list[int]]
    pool: np.ndarray  # (p, d) parent vectors


def probe_mrr(adapter: Adapter, probe: RetrievalProbe, *, k: int = NEIGHBOUR_K) -> float:
    """MRR@k of the mapped probe queries searching the parent's vectors: the retrieval the
    adapter exists for, measured on queries it never saw."""
    scores = adapter.apply(probe.queries) @ normalize(probe.pool).T
    top = np.argsort(-scores, axis=1)[:, :k]
    ranks = []
    for row, relevant in zip(top, probe.positives, strict=True):
        hit = [r for r, doc in enumerate(row.tolist()) if doc in set(relevant)]
        ranks.append(1.0 / (hit[0] + 1) if hit else 0.0)
    return float(np.mean(ranks)) if ranks else 0.0


def probe_ndcg(adapter: Adapter, probe: RetrievalProbe, *, k: int = NEIGHBOUR_K) -> float:
    """nDCG@k of the mapped probe queries with every positive counted (binary gains):
    unlike MRR it credits finding the second and third relevant document, which is what
    separates two blends on a corpus with many judgements per query."""
    scores = adapter.apply(probe.queries) @ normalize(probe.pool).T
    top = np.argsort(-scores, axis=1)[:, :k]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    values = []
    for row, relevant in zip(top, probe.positives, strict=True):
        wanted = set(relevant)
        dcg = sum(discounts[r] for r, doc in enumerate(row.tolist()) if doc in wanted)
        ideal = discounts[: min(len(wanted), k)].sum()
        values.append(dcg / ideal if ideal else 0.0)
    return float(np.mean(values)) if values else 0.0


@dataclass(frozen=True)
class _Candidate:
    name: str
    method: str
    ridge_lambda: float | None
    rows: str  # "all" pairs, or "documents" only


def _candidates(lambdas: Sequence[float], *, with_documents_only: bool) -> list[_Candidate]:
    subsets = ["all", "documents"] if with_documents_only else ["all"]
    out = []
    for rows in subsets:
        tag = "" if rows == "all" else "/documents"
        out.append(_Candidate(f"procrustes{tag}", "procrustes", None, rows))
        out += [_Candidate(f"ridge@{lam:g}{tag}", "ridge", lam, rows) for lam in lambdas]
    return out


def _fit(candidate: _Candidate, x: np.ndarray, y: np.ndarray) -> Adapter:
    if candidate.method == "procrustes":
        return fit_procrustes(x, y)
    return fit_ridge(x, y, ridge_lambda=candidate.ridge_lambda)


def fit_adapter(
    x: np.ndarray,
    y: np.ndarray,
    *,
    lambdas: Sequence[float] = RIDGE_LAMBDAS,
    held_out_fraction: float = HELD_OUT_FRACTION,
    seed: int = 0,
    is_query: np.ndarray | None = None,
    probe: RetrievalProbe | None = None,
) -> Adapter:
    """Fit Procrustes and ridge (each λ) on a train split, choose on held-out data, then
    refit the winner on every pair. `scores` records each candidate's held-out numbers
    (identity included, so a map no better than doing nothing shows as such).

    Without a probe, held-out mean cosine of mapped x to y decides (smooth on small
    splits, where the neighbour overlap, also reported, moves in steps of 1/k). With a
    probe (judged queries kept out of the fit), its MRR@10 decides, and when `is_query`
    marks the query pairs the candidates also include maps fitted on the documents alone:
    pulling the child's queries onto the parent's undoes what the fine-tune taught them,
    while aligning the document spaces keeps it (Drift-Adapter's premise)."""
    x64, y64 = _pair(x, y)
    mask = np.zeros(len(x64), bool) if is_query is None else np.asarray(is_query, bool)
    train, held = held_out_split(len(x64), fraction=held_out_fraction, seed=seed)
    doc_train = train[~mask[train]]
    candidates = _candidates(
        lambdas, with_documents_only=probe is not None and len(doc_train) >= 2 and mask.any()
    )
    pool = y64  # rank among every parent vector: the held-out rows compete with the rest
    table = {"identity": _score(identity(x64.shape[1]), x64[held], y64[held], pool)}
    if probe is not None:
        table["identity"]["probe_mrr@10"] = round(probe_mrr(identity(x64.shape[1]), probe), 6)
    fitted: dict[str, Adapter] = {}
    for c in candidates:
        rows = train if c.rows == "all" else doc_train
        fitted[c.name] = _fit(c, x64[rows], y64[rows])
        table[c.name] = _score(fitted[c.name], x64[held], y64[held], pool)
        if probe is not None:
            table[c.name]["probe_mrr@10"] = round(probe_mrr(fitted[c.name], probe), 6)

    def merit(c: _Candidate) -> tuple:
        row = table[c.name]
        return (row.get("probe_mrr@10", 0.0), row["cosine"])

    best = max(candidates, key=merit)
    rows = np.arange(len(x64)) if best.rows == "all" else np.flatnonzero(~mask)
    final = _fit(best, x64[rows], y64[rows])
    chosen = table[best.name]
    final.scores = {
        "chosen": best.name,
        "fitted_on": best.rows,
        "held_out_cosine": chosen["cosine"],
        f"held_out_overlap@{NEIGHBOUR_K}": chosen[f"overlap@{NEIGHBOUR_K}"],
        "identity_cosine": table["identity"]["cosine"],
        "pairs": len(x64),
        "held_out_pairs": len(held),
        "candidates": table,
    }
    if probe is not None:
        final.scores["probe_mrr@10"] = chosen["probe_mrr@10"]
        final.scores["identity_probe_mrr@10"] = table["identity"]["probe_mrr@10"]
        final.scores["probe_queries"] = len(probe.queries)
    return final


# --------------------------------------------------------------------------- per corpus

BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


RANKING_TEMPERATURE = 0.02
RANKING_STEPS = 100
RANKING_LR = 1e-3


def fit_ranking_map(
    *,
    queries: np.ndarray,
    parent_docs: np.ndarray,
    child_docs: np.ndarray,
    temperature: float = RANKING_TEMPERATURE,
    steps: int = RANKING_STEPS,
    lr: float = RANKING_LR,
) -> Adapter:
    """A query-side map M fitted so that the old index ranks a child query as a reindex
    would: for each of `queries` (child vectors, judgements not needed) the softmax over the
    documents of ⟨normalize(q M), p⟩ / T is pulled towards that of ⟨q, c⟩ / T, with p the
    index's vectors and c the child's own of the same documents. Least squares (‖P V − C‖
    or ‖C A − P‖) spreads its error over every direction and document alike; a ranking
    loss spends the map's capacity on what decides the top of each list. Starts from the
    identity (raw child queries) and runs full-batch Adam: deterministic, no seed."""
    import torch  # only the corpus adapter needs it; the rest of this module is numpy

    q = torch.from_numpy(normalize(queries))
    p = torch.from_numpy(normalize(parent_docs))
    with torch.no_grad():
        teacher = torch.softmax(q @ torch.from_numpy(normalize(child_docs)).T / temperature, 1)
    d = q.shape[1]
    weight = torch.eye(d).requires_grad_()
    optimizer = torch.optim.Adam([weight], lr=lr)
    for _ in range(steps):
        mapped = torch.nn.functional.normalize(q @ weight, dim=1)
        student = torch.log_softmax(mapped @ p.T / temperature, 1)
        loss = -(teacher * student).sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    fitted = weight.detach().numpy().astype(np.float32)
    # Scale does not change a ranking, but a blend with another map adds outputs: give the
    # mapped queries unit length on average, as the other map's are.
    fitted /= float(np.mean(np.linalg.norm(queries @ fitted, axis=1))) or 1.0
    return Adapter(
        weight=fitted,
        bias=np.zeros(d, dtype=np.float32),
        method="ranking",
        scores={"final_loss": round(float(loss.detach()), 6)},
    )


def blend(documents: Adapter, queries: Adapter, *, weight: float) -> Adapter:
    """weight·documents + (1 − weight)·queries as one affine map: its scores are the same mix
    of the reindex-like scores and the parent-query-like ones."""
    return Adapter(
        weight=(weight * documents.weight + (1 - weight) * queries.weight).astype(np.float32),
        bias=(weight * documents.bias + (1 - weight) * queries.bias).astype(np.float32),
        method=f"blend@{weight:g}",
    )


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, scores.shape[1])
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def reindex_fidelity(
    adapter: Adapter, *, queries: np.ndarray, parent_docs: np.ndarray, child_docs: np.ndarray
) -> float:
    """Mean top-k overlap between what the mapped child queries find among the index's
    vectors and what the same queries find among the child's own vectors of those
    documents: how closely the map reproduces a reindex, without any judgement."""
    got = _top(adapter.apply(queries) @ normalize(parent_docs).T, NEIGHBOUR_K)
    want = _top(normalize(queries) @ normalize(child_docs).T, NEIGHBOUR_K)
    hits = [len(set(g.tolist()) & set(w.tolist())) for g, w in zip(got, want, strict=True)]
    return float(np.mean(hits) / got.shape[1])


@dataclass(frozen=True)
class CorpusPairs:
    """One corpus seen by both versions: a document sample as the index holds it (parent)
    and as the child embeds it, and the corpus's query texts embedded by each. child_docs
    is None where the ranking map cannot matter (needs_ranking_map)."""

    child_docs: np.ndarray | None
    parent_docs: np.ndarray
    child_queries: np.ndarray
    parent_queries: np.ndarray


def _ranking_map_fit(pairs: CorpusPairs, *, seed: int) -> tuple[Adapter, dict]:
    """The ranking map on four fifths of the documents, its reindex fidelity on the rest
    (against the identity's), then refitted on every document. The corpus's queries and
    the documents themselves (child vectors, as pseudo-queries) both teach it."""
    train, held = held_out_split(len(pairs.child_docs), fraction=HELD_OUT_FRACTION, seed=seed)
    teach = np.concatenate([pairs.child_queries, pairs.child_docs])

    def fidelity(adapter: Adapter) -> float:
        return round(
            reindex_fidelity(
                adapter,
                queries=pairs.child_queries,
                parent_docs=pairs.parent_docs[held],
                child_docs=pairs.child_docs[held],
            ),
            6,
        )

    on_train = fit_ranking_map(
        queries=np.concatenate([pairs.child_queries, pairs.child_docs[train]]),
        parent_docs=pairs.parent_docs[train],
        child_docs=pairs.child_docs[train],
    )
    scores = {
        f"held_out_reindex_overlap@{NEIGHBOUR_K}": fidelity(on_train),
        f"identity_reindex_overlap@{NEIGHBOUR_K}": fidelity(identity(teach.shape[1])),
    }
    final = fit_ranking_map(
        queries=teach, parent_docs=pairs.parent_docs, child_docs=pairs.child_docs
    )
    return final, scores


def needs_ranking_map(*, probe: RetrievalProbe | None, unprobed_weight: float) -> bool:
    """Whether fit_corpus_adapter can use the ranking map, and so whether the child's pass
    over the document sample (minutes on a CPU) is worth making: not on an old task with no
    judged queries to choose a blend by, where the query map alone is the adapter."""
    return probe is not None or unprobed_weight > 0


def fit_corpus_adapter(
    pairs: CorpusPairs,
    *,
    probe: RetrievalProbe | None = None,
    unprobed_weight: float = 1.0,
    lambdas: Sequence[float] = RIDGE_LAMBDAS,
    seed: int = 0,
) -> Adapter:
    """The adapter for one corpus, as a blend of two maps:

    - a ranking map (fit_ranking_map), with which the old index ranks like a reindex;
    - a query map, the child's queries of this corpus onto the parent's (fit_adapter), with
      which it ranks as the parent's own queries did.

    Which is better depends on the corpus: on the fine-tune's own task the child is better,
    on an old task it has forgotten. Only judged queries can tell, so with a probe (judged
    queries of the corpus, searched among the sampled documents) its nDCG@10 picks the blend
    weight. Without one the caller says which side to trust (`unprobed_weight`): the
    ranking map (1) on the fine-tune's own task, where the reindex is the change being
    adopted; the query map (0) on an old task, where the parent's ranking is what drift
    loses."""
    if len(pairs.child_queries) < 2:
        raise ValueError("a corpus adapter needs at least two queries")
    queries = fit_adapter(pairs.child_queries, pairs.parent_queries, lambdas=lambdas, seed=seed)
    if needs_ranking_map(probe=probe, unprobed_weight=unprobed_weight):
        if pairs.child_docs is None or len(pairs.child_docs) < 2:
            raise ValueError("a corpus adapter needs at least two documents")
        documents, doc_scores = _ranking_map_fit(pairs, seed=seed)
    else:
        # Weight 0 is the query map alone: the ranking map would go unused.
        documents, doc_scores = queries, None
    blends = {}
    if probe is not None:
        for weight in BLEND_WEIGHTS:
            blends[weight] = round(probe_ndcg(blend(documents, queries, weight=weight), probe), 6)
    # Ties go to the heavier document weight: the reindex is the change being adopted.
    chosen = max(blends, key=lambda w: (blends[w], w)) if blends else unprobed_weight
    final = blend(documents, queries, weight=chosen)
    final.scores = {
        "chosen": f"blend@{chosen:g}",
        "document_weight": chosen,
        "blend_chosen_by": "probe" if blends else "task",
        "ranking_map": doc_scores,
        "query_map": {
            "chosen": queries.scores["chosen"],
            "held_out_cosine": queries.scores["held_out_cosine"],
            "identity_cosine": queries.scores["identity_cosine"],
        },
        "documents": 0 if doc_scores is None else len(pairs.child_docs),
        "queries": len(pairs.child_queries),
    }
    if probe is not None:
        final.scores[f"probe_ndcg@{NEIGHBOUR_K}"] = {f"{w:g}": v for w, v in blends.items()}
        final.scores["probe_queries"] = len(probe.queries)
    return final
