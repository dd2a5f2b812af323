"""Index geometry statistics that explain how easy an index is to poison.

An anisotropic space (high mean cosine between random documents) and a low 10th-neighbour
similarity both lower the bar an adversarial passage must clear to enter a query's top 10.
Pure numpy: no Django, no torch.
"""

from __future__ import annotations

import numpy as np

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def _quantiles(values: np.ndarray) -> dict[str, float]:
    qs = np.quantile(np.asarray(values, dtype=np.float64), QUANTILES)
    return {f"q{int(round(q * 100)):02d}": float(v) for q, v in zip(QUANTILES, qs, strict=True)}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)


def mean_random_pair_cosine(vecs: np.ndarray, *, sample_pairs: int, seed: int = 0) -> float:
    """Anisotropy: the expected cosine of two distinct random vectors (0 for an isotropic space)."""
    n = len(vecs)
    if n < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    a = rng.integers(n, size=sample_pairs)
    b = (a + rng.integers(1, n, size=sample_pairs)) % n  # never the same row
    unit = _unit(np.asarray(vecs, dtype=np.float64))
    return float(np.einsum("ij,ij->i", unit[a], unit[b]).mean())


def kth_neighbour_scores(
    *, doc_vecs: np.ndarray, query_vecs: np.ndarray, k: int = 10, chunk: int = 1024
) -> np.ndarray:
    """Exact k-th best dot-product score per query, in chunks to bound memory."""
    docs = np.asarray(doc_vecs, dtype=np.float32)
    k = min(k, len(docs))
    out = []
    for start in range(0, len(query_vecs), chunk):
        scores = np.asarray(query_vecs[start : start + chunk], dtype=np.float32) @ docs.T
        out.append(-np.partition(-scores, k - 1, axis=1)[:, k - 1])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def geometry_report(
    *,
    doc_vecs: np.ndarray,
    query_vecs: np.ndarray | None = None,
    topk_scores: np.ndarray | None = None,
    sample_pairs: int = 10000,
    seed: int = 0,
) -> dict:
    """Norms, anisotropy and the per-query 10th-neighbour bar.

    The 10th-neighbour similarity comes from `topk_scores` (column 10, descending, as
    returned by the real index) when given, otherwise from exact search of `query_vecs`.
    """
    docs = np.asarray(doc_vecs, dtype=np.float64)
    report: dict = {
        "n_docs": int(len(docs)),
        "dimension": int(docs.shape[1]) if docs.ndim == 2 else 0,
        "doc_norm_quantiles": _quantiles(np.linalg.norm(docs, axis=1)),
        "mean_random_pair_cosine": mean_random_pair_cosine(
            docs, sample_pairs=sample_pairs, seed=seed
        ),
        "sample_pairs": int(sample_pairs),
    }
    tenth = None
    if topk_scores is not None:
        topk = np.asarray(topk_scores, dtype=np.float64)
        if topk.shape[1] < 10:
            raise ValueError("topk_scores needs at least 10 columns")
        tenth = topk[:, 9]
    elif query_vecs is not None:
        tenth = kth_neighbour_scores(doc_vecs=docs, query_vecs=query_vecs, k=10)
    if query_vecs is not None:
        report["query_norm_quantiles"] = _quantiles(np.linalg.norm(query_vecs, axis=1))
    if tenth is not None:
        report["n_queries"] = int(len(tenth))
        report["tenth_neighbour_quantiles"] = _quantiles(tenth)
    return report


class DocGeometry:
    """geometry_report's document statistics from blocks that arrive one at a time (a
    server-side cursor), so the index never has to fit in memory: one norm per document is
    kept, and the mean cosine of two distinct random documents is computed exactly over all
    pairs, from the sum of the unit vectors:

        mean over i != j of u_i . u_j = (|sum u|^2 - sum |u_i|^2) / (n (n - 1))
    """

    def __init__(self) -> None:
        self._norms: list[np.ndarray] = []
        self._unit_sum: np.ndarray | None = None
        self._unit_sq = 0.0

    @property
    def n_docs(self) -> int:
        return sum(len(n) for n in self._norms)

    def add(self, docs: np.ndarray) -> None:
        docs = np.asarray(docs, dtype=np.float64)
        if not len(docs):
            return
        unit = _unit(docs)
        self._norms.append(np.linalg.norm(docs, axis=1))
        total = unit.sum(axis=0)
        self._unit_sum = total if self._unit_sum is None else self._unit_sum + total
        self._unit_sq += float(np.einsum("ij,ij->", unit, unit))

    def mean_pair_cosine(self) -> float:
        n = self.n_docs
        if n < 2:
            return float("nan")
        return float((self._unit_sum @ self._unit_sum - self._unit_sq) / (n * (n - 1)))

    def report(
        self, *, query_vecs: np.ndarray | None = None, tenth: np.ndarray | None = None
    ) -> dict:
        """The report geometry_report gives, with `tenth` each query's 10th-best score."""
        norms = np.concatenate(self._norms) if self._norms else np.zeros(0)
        report: dict = {
            "n_docs": self.n_docs,
            "dimension": 0 if self._unit_sum is None else int(len(self._unit_sum)),
            "doc_norm_quantiles": _quantiles(norms) if len(norms) else {},
            "mean_random_pair_cosine": self.mean_pair_cosine(),
            "pairs": "all",
        }
        if query_vecs is not None:
            report["query_norm_quantiles"] = _quantiles(np.linalg.norm(query_vecs, axis=1))
        if tenth is not None:
            report["n_queries"] = int(len(tenth))
            report["tenth_neighbour_quantiles"] = _quantiles(tenth)
        return report
