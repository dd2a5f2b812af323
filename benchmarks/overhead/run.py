"""Platform overhead with the deterministic fake encoder (no model cost): end-to-end docs/s
of the embed job and peak RSS, at two corpus sizes, to show memory stays flat.

    .venv/bin/python benchmarks/overhead/run.py [--sizes 100000 500000] [--dim 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks._django import bench_user, machine, setup  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def synthetic_corpus(n: int):
    """n documents of ~30 words written by one INSERT ... SELECT generate_series."""
    from django.db import connection

    from embedhub.corpora.models import Corpus

    user = bench_user()
    Corpus.objects.filter(owner=user, name=f"synthetic-{n}").delete()
    corpus = Corpus.objects.create(owner=user, name=f"synthetic-{n}")
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO corpora_document (corpus_id, external_id, title, text, metadata, "
            "content_hash, created_at, updated_at) "
            "SELECT %s, 'doc-' || g, 'Title ' || g, repeat('word' || (g %% 997) || ' ', 30), "
            "'{}'::jsonb, encode(sha256(('doc-' || g)::bytea), 'hex'), now(), now() "
            "FROM generate_series(1, %s) g",
            [corpus.pk, n],
        )
    return user, corpus


def run_size(n: int, dim: int, batch_size: int) -> dict:
    from embedhub.jobs.runner import job_execute
    from embedhub.jobs.submission import job_submit_checked
    from embedhub.registry.services import model_version_default

    user, corpus = synthetic_corpus(n)
    params = {
        "corpus": corpus.pk,
        "model_version": model_version_default().pk,
        "encoder": f"fake:{dim}",
        "batch_size": batch_size,
    }
    job, _ = job_submit_checked(user=user, kind="embed", params=params)
    from embedhub.core.profiling import PeakRss

    with PeakRss(interval=0.05) as rss:
        start = time.perf_counter()
        outcome = job_execute(job_id=job.pk, worker="bench")
        seconds = time.perf_counter() - start
    job.refresh_from_db()
    assert outcome == "succeeded", job.error
    return {
        "docs": n,
        "embed_docs_per_s": job.result["docs_per_second"],
        "end_to_end_docs_per_s_incl_hnsw": round(n / seconds, 1),
        "embed_seconds": job.result["embed_seconds"],
        "hnsw_and_finalise_seconds": job.result["finalise_seconds"],
        "rss_start_mb": round(rss.baseline / 2**20, 1),
        "rss_peak_mb": round(rss.peak / 2**20, 1),
        "rss_growth_mb": round(rss.growth / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 500_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=512)
    args = parser.parse_args()
    setup("embedhub_bench")
    import workers.ml.encoder  # noqa: F401 - torch's import is a one-off, not per-corpus memory

    rows = [run_size(n, args.dim, args.batch_size) for n in args.sizes]
    report = {"machine": machine(), "dim": args.dim, "batch_size": args.batch_size, "runs": rows}
    OUT.mkdir(exist_ok=True)
    (OUT / "result.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
