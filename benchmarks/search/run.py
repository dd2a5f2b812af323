"""Search latency (p50/p99) and recall@10 of HNSW against exact search, through the
platform's search selector, on an index of >= 100k vectors.

Two kinds of vectors:
- `--vectors fake`: the deterministic fake encoder, uniform on the sphere. No structure at
  all, the worst case for any ANN index: recall here is a floor, not a forecast.
- `--vectors jitter` (default): the 5,183 real all-MiniLM-L6-v2 SciFact document vectors
  (cached by benchmarks/gaslite), each repeated with Gaussian jitter up to --docs vectors,
  so the set keeps real embeddings' anisotropy; queries are jittered real vectors too.
  Embedding 100k real documents would take hours on 2 CPU cores.

    .venv/bin/python benchmarks/search/run.py [--vectors jitter|fake] [--docs 100000] [--queries 200]
"""

from __future__ import annotations

import argparse
import json
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


def jittered(n: int, *, sigma: float, seed: int) -> np.ndarray:
    if not REAL.exists():
        raise SystemExit(f"{REAL} is missing: run benchmarks/gaslite/run.py once to cache it")
    base = np.load(REAL).astype(np.float32)
    rng = np.random.default_rng(seed)
    picks = base[rng.integers(0, len(base), n)]
    noisy = picks + rng.standard_normal(picks.shape).astype(np.float32) * sigma
    return noisy / np.linalg.norm(noisy, axis=1, keepdims=True)


def build_jitter_index(docs: int, sigma: float):
    """Real-embedding-shaped vectors written through the platform's own COPY and HNSW path."""
    from django.utils import timezone

    from embedhub.registry.services import model_version_default
    from embedhub.vectors import tables
    from embedhub.vectors.models import VectorIndex
    from embedhub.vectors.services import index_create

    user, corpus = synthetic_corpus(docs)
    index = index_create(owner=user, corpus=corpus, model_version=model_version_default())
    ids = list(corpus.documents.order_by("id").values_list("id", "content_hash"))
    vectors = jittered(len(ids), sigma=sigma, seed=1)
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
    tables.hnsw_build(
        table=index.table_name,
        storage=index.storage,
        m=index.hnsw_m,
        ef_construction=index.hnsw_ef_construction,
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


def timed_search(index, qs: np.ndarray, *, exact: bool, ef: int | None, k: int = 10):
    from embedhub.vectors.selectors import index_search

    latencies, ids = [], []
    for q in qs:
        start = time.perf_counter()
        hits = index_search(index=index, query_vectors=q[None], k=k, exact=exact, ef_search=ef)[0]
        latencies.append((time.perf_counter() - start) * 1000)
        ids.append([h.document_id for h in hits])
    return np.array(latencies), ids


def recall(approx: list[list[int]], exact: list[list[int]]) -> float:
    return float(
        np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact, strict=True)])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vectors", choices=["jitter", "fake"], default="jitter")
    parser.add_argument("--sigma", type=float, default=0.02, help="jitter per coordinate")
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef", type=int, nargs="+", default=[40, 100, 200])
    args = parser.parse_args()
    setup("embedhub_bench")
    if args.vectors == "jitter":
        index, build = build_jitter_index(args.docs, args.sigma)
        qs = jittered(args.queries, sigma=args.sigma * 2, seed=2)
    else:
        index, build = build_index(args.docs, args.dim)
        qs = queries(args.queries, args.dim)
    exact_ms, exact_ids = timed_search(index, qs, exact=True, ef=None)
    rows = [
        {
            "mode": "exact",
            "p50_ms": round(float(np.percentile(exact_ms, 50)), 2),
            "p99_ms": round(float(np.percentile(exact_ms, 99)), 2),
            "recall@10": 1.0,
        }
    ]
    for ef in args.ef:
        ms, ids = timed_search(index, qs, exact=False, ef=ef)
        rows.append(
            {
                "mode": f"hnsw ef_search={ef}",
                "p50_ms": round(float(np.percentile(ms, 50)), 2),
                "p99_ms": round(float(np.percentile(ms, 99)), 2),
                "recall@10": round(recall(ids, exact_ids), 4),
            }
        )
    report = {
        "machine": machine(),
        "kind": args.vectors,
        "vectors": index.vector_count,
        "dim": index.dimension,
        "sigma": args.sigma if args.vectors == "jitter" else None,
        "hnsw": {"m": index.hnsw_m, "ef_construction": index.hnsw_ef_construction},
        "build": build,
        "rows": rows,
    }
    OUT.mkdir(exist_ok=True)
    (OUT / f"result-{args.vectors}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
