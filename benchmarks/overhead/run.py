"""Platform overhead with the deterministic fake encoder (no model cost): end-to-end docs/s
of the embed job and peak RSS, at two corpus sizes, to show memory stays flat.

`--builds` runs each size's job once per HNSW build variant, interleaved over `--rounds`, so
the variants share the machine's load:
- `new`: the platform's build (parallel workers and maintenance_work_mem planned by
  embedhub.vectors.hnsw, progress watched);
- `serial`: the same with EMBEDHUB_HNSW_BUILD_WORKERS = 0;
- `today`: the build before issue 12, verbatim: maintenance_work_mem 512MB and the
  server's own max_parallel_maintenance_workers (2 unless configured).

    .venv/bin/python benchmarks/overhead/run.py [--sizes 100000 500000] [--dim 64]
        [--builds new serial today] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
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


def today_hnsw_build(*, table: str, storage: str, m: int, ef_construction: int, **_plan) -> None:
    """tables.hnsw_build before issue 12 (it took no plan); DEBUG1 only to count the
    parallel workers it got."""
    from django.db import connection

    ops = "halfvec_cosine_ops" if storage == "halfvec" else "vector_cosine_ops"
    with connection.cursor() as cur:
        cur.execute("SET maintenance_work_mem = '512MB'")
        cur.execute("SET client_min_messages = debug1")
        cur.execute(
            f"CREATE INDEX IF NOT EXISTS {table}_hnsw ON {table} "
            f"USING hnsw (embedding {ops}) WITH (m = %s, ef_construction = %s)"
            % (int(m), int(ef_construction))
        )
        cur.execute("RESET maintenance_work_mem")
        cur.execute("RESET client_min_messages")


@contextmanager
def build_variant(name: str):
    from django.conf import settings

    from embedhub.vectors import tables

    saved, build = dict(settings.EMBEDHUB), tables.hnsw_build
    if name == "serial":
        settings.EMBEDHUB["HNSW_BUILD_WORKERS"] = 0
    elif name == "today":
        tables.hnsw_build = today_hnsw_build
    try:
        yield
    finally:
        settings.EMBEDHUB.clear()
        settings.EMBEDHUB.update(saved)
        tables.hnsw_build = build


def run_size(n: int, dim: int, batch_size: int, build: str = "new") -> dict:
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

    load = os.getloadavg()[0]
    with build_variant(build), PeakRss(interval=0.05) as rss:
        start = time.perf_counter()
        outcome = job_execute(job_id=job.pk, worker="bench")
        seconds = time.perf_counter() - start
    job.refresh_from_db()
    assert outcome == "succeeded", job.error
    hnsw = job.result.get("hnsw") or {}
    return {
        "docs": n,
        "build": build,
        "load_1min_before": round(load, 2),
        "hnsw_seconds": hnsw.get("seconds"),
        "hnsw_workers_launched": hnsw.get("workers_launched"),
        "hnsw_memory_mb": 512 if build == "today" else hnsw.get("memory_mb"),
        "hnsw_spilled": hnsw.get("spilled"),
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
    parser.add_argument("--builds", nargs="+", choices=["new", "serial", "today"], default=["new"])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", default="result.json", help="file name under out/")
    args = parser.parse_args()
    setup("embedhub_bench")
    import workers.ml.encoder  # noqa: F401 - torch's import is a one-off, not per-corpus memory

    rows = []
    for n in args.sizes:
        for r in range(args.rounds):
            # Each round starts with the next variant, so none always runs first.
            order = args.builds[r % len(args.builds) :] + args.builds[: r % len(args.builds)]
            for build in order:
                rows.append(run_size(n, args.dim, args.batch_size, build) | {"round": r})
                print(json.dumps(rows[-1]), flush=True)
    report = {"machine": machine(), "dim": args.dim, "batch_size": args.batch_size, "runs": rows}
    OUT.mkdir(exist_ok=True)
    (OUT / args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
