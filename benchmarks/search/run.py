"""Search latency (p50/p99) and recall@k of HNSW against exact search, through the
platform's search selector, on an index of >= 100k vectors; side by side with the search
SQL before issue 12 (`before`: a plain LIMIT over pgvector's relaxed-order iterative scan),
reporting for each whether the rows came out sorted and their recall at k (10 and 100).

Three kinds of vectors:
- `--vectors fake`: the deterministic fake encoder, uniform on the sphere. No structure at
  all, the worst case for any ANN index: recall here is a floor, not a forecast.
- `--vectors jitter` (default): the 5,183 real all-MiniLM-L6-v2 SciFact document vectors
  (cached by benchmarks/gaslite, or --real-vectors), each repeated with Gaussian jitter up to
  --docs vectors, so the set keeps real embeddings' anisotropy; queries are jittered too.
  Embedding 100k real documents would take hours on 2 CPU cores.
- `--vectors clusters`: the same jitter around 5,183 random unit vectors instead of the real
  ones (no model, no cache needed): clustered like a corpus, but isotropic.

    .venv/bin/python benchmarks/search/run.py [--vectors jitter|clusters|fake] [--docs 100000]
        [--queries 200] [--ef 40 100 200] [--k 10 100]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks._django import machine, setup  # noqa: E402
from benchmarks.overhead.run import synthetic_corpus  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def build_index(docs: int, dim: int):
    from embedhub.jobs.runner import job_execute
    from embedhub.jobs.submission import job_submit_checked
    from embedhub.registry.services import model_version_default

    user, corpus = synthetic_corpus(docs)
    params = {
        "corpus": corpus.pk,
        "model_version": model_version_default().pk,
        "encoder": f"fake:{dim}",
        "batch_size": 1024,
    }
    job, _ = job_submit_checked(user=user, kind="embed", params=params)
    assert job_execute(job_id=job.pk, worker="bench") == "succeeded"
    job.refresh_from_db()
    from embedhub.vectors.models import VectorIndex

    return VectorIndex.objects.get(pk=job.params["index"]), job.result


REAL = Path(__file__).resolve().parents[1] / "gaslite" / "out" / "scifact_minilm_docs.npy"
CENTRES = 5_183  # as many as SciFact has documents


def centres(kind: str, *, real: Path, dim: int) -> np.ndarray:
    if kind == "clusters":
        return queries(CENTRES, dim, seed=99)
    if not real.exists():
        raise SystemExit(f"{real} is missing: run benchmarks/gaslite/run.py once to cache it")
    return np.load(real).astype(np.float32)


def jittered(base: np.ndarray, n: int, *, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = base[rng.integers(0, len(base), n)]
    noisy = picks + rng.standard_normal(picks.shape).astype(np.float32) * sigma
    return noisy / np.linalg.norm(noisy, axis=1, keepdims=True)


def build_jitter_index(docs: int, sigma: float, base: np.ndarray):
    """Real-embedding-shaped vectors written through the platform's own COPY and HNSW path."""
    from django.utils import timezone

    from embedhub.registry.services import model_version_default
    from embedhub.vectors import hnsw, tables
    from embedhub.vectors.models import VectorIndex
    from embedhub.vectors.services import index_create

    user, corpus = synthetic_corpus(docs)
    index = index_create(owner=user, corpus=corpus, model_version=model_version_default())
    ids = list(corpus.documents.order_by("id").values_list("id", "content_hash"))
    vectors = jittered(base, len(ids), sigma=sigma, seed=1)
    start = time.perf_counter()
    for lo in range(0, len(ids), 5000):
        chunk = ids[lo : lo + 5000]
        tables.rows_replace(
            table=index.table_name,
            storage=index.storage,
            doc_ids=[i for i, _ in chunk],
            chunks=[0] * len(chunk),
            hashes=[h for _, h in chunk],
            vectors=vectors[lo : lo + 5000],
        )
    copy_s = time.perf_counter() - start
    plan = hnsw.hnsw_build_plan(
        rows=len(ids), dimension=index.dimension, storage=index.storage, m=index.hnsw_m
    )
    tables.hnsw_build(
        table=index.table_name,
        storage=index.storage,
        m=index.hnsw_m,
        ef_construction=index.hnsw_ef_construction,
        workers=plan.workers,
        memory_mb=plan.memory_mb,
    )
    hnsw_s = time.perf_counter() - start - copy_s
    VectorIndex.objects.filter(pk=index.pk).update(
        state="ready", vector_count=len(ids), built_at=timezone.now()
    )
    index.refresh_from_db()
    return index, {"copy_seconds": round(copy_s, 2), "hnsw_seconds": round(hnsw_s, 2)}


def queries(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, dim)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def timed_search(index, qs: np.ndarray, *, exact: bool, ef: int | None, k: int):
    """The platform's search: (latencies ms, ids per query, whether each came out sorted)."""
    from embedhub.vectors.selectors import index_search

    latencies, ids, ordered = [], [], []
    for q in qs:
        start = time.perf_counter()
        hits = index_search(index=index, query_vectors=q[None], k=k, exact=exact, ef_search=ef)[0]
        latencies.append((time.perf_counter() - start) * 1000)
        ids.append([h.document_id for h in hits])
        ordered.append(is_sorted([h.score for h in hits]))
    return np.array(latencies), ids, ordered


BEFORE_SQL = (
    "SELECT v.document_id, d.external_id, d.title, 1 - (v.embedding <=> %s::vector) AS score, "
    "v.chunk FROM {table} v JOIN corpora_document d ON d.id = v.document_id "
    "ORDER BY v.embedding <=> %s::vector LIMIT %s"
)


def timed_search_before(index, qs: np.ndarray, *, ef: int | None, k: int):
    """index_search before issue 12, verbatim (truncated index, vector storage): one
    transaction per call, as the platform's is, with the rows in the order the scan
    returned them (it then sorted them in Python)."""
    from django.db import connection, transaction

    from embedhub.vectors import tables

    latencies, ids, ordered = [], [], []
    sql = BEFORE_SQL.format(table=index.table_name)
    for q in qs:
        start = time.perf_counter()
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute(f"SET LOCAL hnsw.ef_search = {int(ef or max(40, k))}")
            cur.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
            literal = tables.vector_literal(q)
            cur.execute(sql, [literal, literal, k])
            rows = cur.fetchall()
        latencies.append((time.perf_counter() - start) * 1000)
        ids.append([r[0] for r in rows])
        ordered.append(is_sorted([r[3] for r in rows]))
    return np.array(latencies), ids, ordered


def is_sorted(scores: list[float]) -> bool:
    return all(a >= b for a, b in zip(scores, scores[1:], strict=False))


def recall(approx: list[list[int]], exact: list[list[int]], k: int) -> float:
    return float(
        np.mean(
            [len(set(a[:k]) & set(e[:k])) / len(e[:k]) for a, e in zip(approx, exact, strict=True)]
        )
    )


def row(mode: str, ms: np.ndarray, ids, ordered, exact_ids, k: int) -> dict:
    return {
        "mode": mode,
        "k": k,
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        f"recall@{k}": round(recall(ids, exact_ids, k), 4),
        "sorted_share": round(float(np.mean(ordered)), 4),
    }


def compare(index, qs: np.ndarray, *, efs: list[int], ks: list[int]) -> list[dict]:
    exact_ms, exact_ids, ordered = timed_search(index, qs, exact=True, ef=None, k=max(ks))
    rows = [row("exact", exact_ms, exact_ids, ordered, exact_ids, max(ks))]
    for k in ks:
        for ef in efs:
            # Interleaved, so a change in the machine's load hits both alike.
            before = timed_search_before(index, qs, ef=ef, k=k)
            after = timed_search(index, qs, exact=False, ef=ef, k=k)
            rows.append(row(f"before ef_search={ef}", *before, exact_ids, k))
            rows.append(row(f"after ef_search={ef}", *after, exact_ids, k))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vectors", choices=["jitter", "clusters", "fake"], default="jitter")
    parser.add_argument("--real-vectors", type=Path, default=REAL, help="for --vectors jitter")
    parser.add_argument("--sigma", type=float, default=0.02, help="jitter per coordinate")
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef", type=int, nargs="+", default=[40, 100, 200])
    parser.add_argument("--k", type=int, nargs="+", default=[10, 100])
    args = parser.parse_args()
    setup("embedhub_bench")
    if args.vectors == "fake":
        index, build = build_index(args.docs, args.dim)
        qs = queries(args.queries, args.dim)
    else:
        base = centres(args.vectors, real=args.real_vectors, dim=args.dim)
        index, build = build_jitter_index(args.docs, args.sigma, base)
        qs = jittered(base, args.queries, sigma=args.sigma * 2, seed=2)
    report = {
        "machine": machine(),
        "load_before": os.getloadavg(),
        "kind": args.vectors,
        "vectors": index.vector_count,
        "dim": index.dimension,
        "sigma": args.sigma if args.vectors != "fake" else None,
        "hnsw": {"m": index.hnsw_m, "ef_construction": index.hnsw_ef_construction},
        "build": build,
        "rows": compare(index, qs, efs=args.ef, ks=args.k),
        "load_after": os.getloadavg(),
    }
    OUT.mkdir(exist_ok=True)
    (OUT / f"result-{args.vectors}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
