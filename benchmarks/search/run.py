"""Search latency (p50/p99) and recall@10 of HNSW against exact search, through the
platform's search selector, on an index of >= 100k vectors.

Vectors come from the deterministic fake encoder (uniform on the sphere: the hardest case
for an ANN index, so recall here is a floor), or with --real from all-MiniLM-L6-v2 over
the shared corpora (slower to build: ~15k real documents on 2 cores).

    .venv/bin/python benchmarks/search/run.py [--docs 100000] [--dim 384] [--queries 200]
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
    params = {"corpus": corpus.pk, "model_version": model_version_default().pk,
              "encoder": f"fake:{dim}", "batch_size": 1024}  # fmt: skip
    job, _ = job_submit_checked(user=user, kind="embed", params=params)
    assert job_execute(job_id=job.pk, worker="bench") == "succeeded"
    job.refresh_from_db()
    from embedhub.vectors.models import VectorIndex

    return VectorIndex.objects.get(pk=job.params["index"]), job.result


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
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef", type=int, nargs="+", default=[40, 100, 200])
    args = parser.parse_args()
    setup("embedhub_bench")
    index, build = build_index(args.docs, args.dim)
    qs = queries(args.queries, args.dim)
    exact_ms, exact_ids = timed_search(index, qs, exact=True, ef=None)
    rows = [{"mode": "exact", "p50_ms": round(float(np.percentile(exact_ms, 50)), 2),
             "p99_ms": round(float(np.percentile(exact_ms, 99)), 2), "recall@10": 1.0}]  # fmt: skip
    for ef in args.ef:
        ms, ids = timed_search(index, qs, exact=False, ef=ef)
        rows.append({"mode": f"hnsw ef_search={ef}", "p50_ms": round(float(np.percentile(ms, 50)), 2),
                     "p99_ms": round(float(np.percentile(ms, 99)), 2),
                     "recall@10": round(recall(ids, exact_ids), 4)})  # fmt: skip
    report = {"machine": machine(), "vectors": index.vector_count, "dim": args.dim,
              "hnsw": {"m": index.hnsw_m, "ef_construction": index.hnsw_ef_construction},
              "build": build, "rows": rows}  # fmt: skip
    OUT.mkdir(exist_ok=True)
    (OUT / "result.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
