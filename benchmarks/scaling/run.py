"""Worker scaling of one sharded embed job: 1, 2, 4 real Celery worker processes.

The encoder is the latency-bound fake accelerator `fake:64@20ms`: it sleeps 20 ms per batch
and uses no CPU, like a GPU busy with a forward pass, so adding workers should add
throughput until what the platform itself does per row (fetch the text, COPY the vectors
into Postgres) is the bound. That bound is measured too: the same job with the zero-latency
`fake:64` at the largest worker count, and a bare single-writer COPY of ready vectors.

    .venv/bin/python benchmarks/scaling/run.py [--docs 40000] [--workers 1,2,4]
        [--shard-size 2500] [--batch-size 32] [--latency-ms 20] [--rounds 1] [--kill]

Runs against its own database (embedhub_bench_scaling) and Redis db 254. --kill adds a run
at the largest worker count that SIGKILLs a worker at 40 % (a replacement starts, the
reaper re-queues the lost shard). Writes benchmarks/scaling/out/result.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks._django import ROOT, bench_user, machine, setup  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
DB_NAME = "embedhub_bench_scaling"


def broker_url() -> str:
    from embedhub.core import embedded

    embedded.services_start(ROOT / "var")
    return embedded.redis_url(ROOT / "var", db=254)


def start_workers(n: int, log_dir: Path, name: str = "scale") -> list[subprocess.Popen]:
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}",
        "DJANGO_SETTINGS_MODULE": "embedhub.settings.base",
        "EMBEDHUB_DB_NAME": DB_NAME,
        "EMBEDHUB_HEARTBEAT_SECONDS": "1",  # so --kill's reaper sees a dead worker soon
    }
    procs, logs = [], []
    for i in range(n):
        log = log_dir / f"{name}-{n}-{i}.log"
        cmd = [sys.executable, "-m", "celery", "-A", "embedhub", "worker", "-Q", "gpu,cpu"]
        cmd += ["--pool=solo", "-n", f"{name}{i}@%h", "--without-gossip", "--without-mingle"]
        cmd += ["--loglevel=INFO"]
        out = open(log, "w")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
        logs.append(log)
    deadline = time.monotonic() + 120
    while not all("ready." in log.read_text() for log in logs):
        if time.monotonic() > deadline:
            stop_workers(procs)  # never leave a stray worker to skew the next run
            raise SystemExit(f"workers not ready; see {log_dir}")
        time.sleep(0.2)
    return procs


def kill_one(procs: list[subprocess.Popen], log_dir: Path) -> str:
    """SIGKILL the last worker (like a lost spot machine) and start a replacement."""
    victim = procs.pop()
    victim.kill()
    victim.wait()
    procs.extend(start_workers(1, log_dir, name="replacement"))
    return f"worker pid {victim.pid}"


def stop_workers(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(timeout=60)


def corpus_ready(user, n: int):
    from embedhub.corpora.models import Corpus, Document

    corpus, _ = Corpus.objects.get_or_create(owner=user, name=f"scaling-{n}")
    if corpus.documents.count() != n:
        corpus.documents.all().delete()
        words = [f"w{i}" for i in range(500)]
        rng = np.random.default_rng(0)
        docs = []
        for i in range(n):
            text = " ".join(rng.choice(words, 40))
            docs.append(
                Document(
                    corpus=corpus,
                    external_id=f"d{i}",
                    title="",
                    text=text,
                    content_hash=f"{i:064d}",
                )
            )
        Document.objects.bulk_create(docs, batch_size=5000)
    return corpus


def reap() -> None:
    from django.conf import settings
    from django.test import override_settings

    from embedhub.jobs.services import jobs_reap

    with override_settings(EMBEDHUB={**settings.EMBEDHUB, "STALE_AFTER_SECONDS": 4}):
        jobs_reap()


def run_job(*, user, corpus, encoder: str, shard_size: int, batch_size: int, kill=None) -> dict:
    """One sharded embed; `kill()` (SIGKILL a worker mid-shard, start another) at 40 %."""
    from embedhub.jobs.models import Job
    from embedhub.jobs.submission import job_submit_checked
    from embedhub.vectors.models import VectorIndex

    corpus.refresh_from_db()
    corpus_size = corpus.documents.count()
    corpus.active_index = None
    corpus.save(update_fields=["active_index"])
    VectorIndex.objects.filter(corpus=corpus).delete()  # a fresh table every run
    params = {
        "corpus": corpus.pk,
        "encoder": encoder,
        "batch_size": batch_size,
        "shard_size": shard_size,
        "activate": True,
    }
    submitted = time.time()
    job, _ = job_submit_checked(user=user, kind="embed", params=params)
    killed = None
    while True:
        job.refresh_from_db()
        if job.status in Job.TERMINAL:
            break
        if kill is not None and killed is None and job.progress_done > corpus_size * 0.4:
            killed = kill()
        if killed is not None:
            reap()  # what the beat's reaper does every 30 s, here every poll
        time.sleep(0.2)
    if job.status != "succeeded":
        raise SystemExit(f"job {job.pk} {job.status}: {job.error}")
    shards = list(job.shards.all())
    first = min(s.started_at for s in shards).timestamp()
    last = max(s.finished_at for s in shards).timestamp()
    n = job.result["embedded"]
    return {
        "job": job.pk,
        "shards": len(shards),
        "workers_used": len({s.worker for s in shards}),
        "embed_seconds": round(last - first, 3),
        "embed_docs_per_second": round(n / (last - first), 1),
        "end_to_end_seconds": round(job.finished_at.timestamp() - submitted, 3),
        "end_to_end_docs_per_second": round(n / (job.finished_at.timestamp() - submitted), 1),
        "hnsw_seconds": (job.result.get("hnsw") or {}).get("seconds"),
        "rows": _rows(job),
        "shard_attempts": sorted(s.attempts for s in shards),
        "killed": killed,
    }


def _rows(job) -> list[int]:
    """[vectors, distinct documents] in the job's index: exactly once means both = docs."""
    from django.db import connection

    from embedhub.vectors.models import VectorIndex

    table = VectorIndex.objects.get(pk=job.params["index"]).table_name
    with connection.cursor() as cur:
        cur.execute(f"SELECT count(*), count(DISTINCT document_id) FROM {table}")
        return list(cur.fetchone())


def copy_bound(*, rows: int, batch_size: int) -> dict:
    """One writer COPYing ready 64-d vectors in the job's batch size: Postgres's share."""
    from django.db import connection, transaction

    from embedhub.vectors import tables

    table = "bench_copy_bound"
    tables.table_drop(table=table)
    tables.table_create(table=table, dimension=64, storage="vector")
    vectors = np.random.default_rng(0).standard_normal((rows, 64)).astype(np.float32)
    started = time.monotonic()
    for lo in range(0, rows, batch_size):
        hi = min(rows, lo + batch_size)
        with transaction.atomic():
            tables.rows_replace(
                table=table,
                storage="vector",
                doc_ids=list(range(lo, hi)),
                chunks=[0] * (hi - lo),
                hashes=["0" * 64] * (hi - lo),
                vectors=vectors[lo:hi],
            )
    seconds = time.monotonic() - started
    tables.table_drop(table=table)
    connection.close()
    return {"rows": rows, "batch_size": batch_size, "rows_per_second": round(rows / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=40_000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--shard-size", type=int, default=2500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--latency-ms", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--kill", action="store_true", help="add a run with a SIGKILL at 40%%")
    args = parser.parse_args()
    os.environ["CELERY_BROKER_URL"] = broker_url()
    setup(DB_NAME)
    user = bench_user()
    corpus = corpus_ready(user, args.docs)
    counts = [int(n) for n in args.workers.split(",")]
    log_dir = OUT / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    encoder = f"fake:64@{args.latency_ms}ms"
    ideal = 1000 * args.batch_size / args.latency_ms
    runs: dict[str, list] = {str(n): [] for n in counts}
    bound, killed = [], []
    for round_no in range(args.rounds):
        for n in counts:  # interleaved rounds: load drifts hit every count alike
            procs = start_workers(n, log_dir)
            try:
                runs[str(n)].append(
                    run_job(
                        user=user,
                        corpus=corpus,
                        encoder=encoder,
                        shard_size=args.shard_size,
                        batch_size=args.batch_size,
                    )
                )
                if n == max(counts):
                    bound.append(
                        run_job(
                            user=user,
                            corpus=corpus,
                            encoder="fake:64",
                            shard_size=args.shard_size,
                            batch_size=args.batch_size,
                        )
                    )
                if n == max(counts) and args.kill:
                    victim = functools.partial(kill_one, procs, log_dir)
                    killed.append(
                        run_job(
                            user=user,
                            corpus=corpus,
                            encoder=encoder,
                            shard_size=args.shard_size,
                            batch_size=args.batch_size,
                            kill=victim,
                        )
                    )
            finally:
                stop_workers(procs)
            print(f"round {round_no + 1}, {n} workers: {runs[str(n)][-1]}", flush=True)
    base = np.median([r["embed_docs_per_second"] for r in runs[str(counts[0])]]) / counts[0]
    summary = {}
    for n in counts:
        rate = float(np.median([r["embed_docs_per_second"] for r in runs[str(n)]]))
        summary[str(n)] = {
            "embed_docs_per_second": round(rate, 1),
            "speedup_vs_1": round(rate / base, 2),
            "efficiency_vs_linear": round(rate / (base * n), 3),
            "vs_latency_ideal": round(rate / (ideal * n), 3),
        }
    result = {
        "machine": machine(),
        "load_at_start": os.getloadavg(),
        "docs": args.docs,
        "encoder": encoder,
        "batch_size": args.batch_size,
        "shard_size": args.shard_size,
        "ideal_docs_per_second_per_worker": ideal,
        "summary": summary,
        "runs": runs,
        "zero_latency_at_max_workers": bound,
        "sigkill_mid_shard_at_max_workers": killed,
        "single_writer_copy_bound": copy_bound(rows=args.docs, batch_size=args.batch_size),
        "load_at_end": os.getloadavg(),
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "result.json").write_text(json.dumps(result, indent=2))
    print(
        json.dumps(
            {
                k: result[k]
                for k in ("summary", "zero_latency_at_max_workers", "single_writer_copy_bound")
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
