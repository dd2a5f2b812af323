"""Retrieval quality through the platform: SciFact with the base all-MiniLM-L6-v2.

Everything goes through EmbedHub's own services and job runners (not HTTP, no broker):
ingest the BEIR corpus, import the test queries + qrels as a query set, register the bundled
base model, then submit the `embed` and `evaluate` jobs and run each with
`embedhub.jobs.runner.job_execute` in this process (the same code path a worker takes).
The check: exact-search nDCG@10 = 0.645 ± 0.003 (the published BEIR figure for
all-MiniLM-L6-v2 at 256 tokens). ANN through HNSW is reported too, with its recall@10
against exact search.

    .venv/bin/python benchmarks/quality/run.py [--data ../shared/data/scifact]
        [--db embedhub_bench] [--reuse] [--no-ann]

Runs against its own database (default embedhub_bench, created and migrated on first use),
never the dev DB. Prints a table and writes benchmarks/quality/out/result.json; exits 1 if
the check fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks._django import ROOT, bench_user, machine, setup  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
CORPUS_NAME = "scifact-quality"
QUERY_SET_NAME = "test"
EXPECTED, TOLERANCE = 0.645, 0.003


def _timed(step: str, timings: dict, fn, *args, **kwargs):
    started = time.monotonic()
    value = fn(*args, **kwargs)
    timings[step] = round(time.monotonic() - started, 2)
    print(f"  {step:<12} {timings[step]:8.1f} s", flush=True)
    return value


def _ingest(*, user, data: Path, reuse: bool):
    """The corpus and its query set, fresh unless --reuse finds them already there."""
    from embedhub.corpora.models import Corpus
    from embedhub.corpora.services import corpus_create, corpus_delete, corpus_ingest_file
    from embedhub.evaluation.services import query_set_create

    corpus = Corpus.objects.filter(owner=user, name=CORPUS_NAME).first()
    if corpus is not None and reuse and corpus.query_sets.filter(name=QUERY_SET_NAME).exists():
        return corpus, corpus.query_sets.get(name=QUERY_SET_NAME), {"reused": True}
    if corpus is not None:
        corpus_delete(corpus=corpus)
    corpus = corpus_create(owner=user, name=CORPUS_NAME)
    report = corpus_ingest_file(
        corpus_id=corpus.pk, path=data / "corpus.jsonl", fmt="jsonl", owner_id=user.pk
    )
    query_set, qs_report = query_set_create(
        owner=user,
        corpus=corpus,
        name=QUERY_SET_NAME,
        queries_file=data / "queries.jsonl",
        qrels_file=data / "qrels.tsv",
    )
    return corpus, query_set, {"corpus": report, "query_set": qs_report}


def _run_job(*, user, kind: str, params: dict):
    """Submit through the API's own path (params checked by the kind's preparer), then
    execute in-process as a worker would."""
    from embedhub.jobs.runner import job_execute
    from embedhub.jobs.submission import job_submit_checked

    job, _ = job_submit_checked(user=user, kind=kind, params=params)
    outcome = job_execute(job_id=job.pk, worker="bench")
    job.refresh_from_db()
    if outcome != "succeeded":
        raise SystemExit(f"{kind} job {job.pk} {outcome}: {job.error}")
    return job


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _table(rows: list[dict]) -> str:
    names = ["ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100"]
    head = f"| {'mode':<5} | " + " | ".join(f"{n:>10}" for n in names)
    head += " | ann R@10 | queries | seconds |"
    lines = [head, "|" + "|".join("-" * len(c) for c in head.strip("|").split("|")) + "|"]
    for row in rows:
        m = row["metrics"]
        recall = row["ann_recall_at_10"]
        lines.append(
            f"| {row['mode']:<5} | "
            + " | ".join(f"{m[n]:>10.4f}" for n in names)
            + f" | {'' if recall is None else f'{recall:.4f}':>8} | {row['n_queries']:>7} |"
            + f" {row['seconds']:>7.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "scifact")
    parser.add_argument("--db", default="embedhub_bench")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep an existing corpus/index (the embed job then embeds nothing)",
    )
    parser.add_argument("--no-ann", action="store_true", help="skip the HNSW evaluation")
    args = parser.parse_args()

    timings: dict[str, float] = {}
    print(f"quality benchmark on {args.data} (database {args.db})", flush=True)
    _timed("setup", timings, setup, args.db)
    from embedhub.registry.services import model_version_default

    user = bench_user()
    corpus, query_set, ingest = _timed(
        "ingest", timings, _ingest, user=user, data=args.data, reuse=args.reuse
    )
    version = _timed("register", timings, model_version_default)
    if version.max_tokens != 256:
        raise SystemExit(
            f"{version} embeds {version.max_tokens} tokens; the 0.645 figure is at 256"
        )
    embed = _timed(
        "embed job",
        timings,
        _run_job,
        user=user,
        kind="embed",
        params={"corpus": corpus.pk, "model_version": version.pk, "activate": True},
    )
    runs = []
    modes = [("exact", {})] if args.no_ann else [("exact", {}), ("ann", {"ef_search": 100})]
    for mode, extra in modes:
        job = _timed(
            f"eval {mode}",
            timings,
            _run_job,
            user=user,
            kind="evaluate",
            params={"corpus": corpus.pk, "query_set": query_set.pk, "mode": mode, **extra},
        )
        runs.append({**job.result, "job": job.pk})

    exact = runs[0]["metrics"]["ndcg@10"]
    passed = abs(exact - EXPECTED) <= TOLERANCE
    print()
    print(_table(runs))
    print(
        f"\nnDCG@10 (exact) = {exact:.4f}; expected {EXPECTED} ± {TOLERANCE}: "
        f"{'PASS' if passed else 'FAIL'}"
    )
    print(
        f"embed job: {embed.result.get('embedded')} docs in {embed.result.get('seconds')} s "
        f"({embed.result.get('docs_per_second')} docs/s)"
    )
    result = {
        "benchmark": "quality",
        "dataset": str(args.data),
        "model_version": {
            "id": version.pk,
            "label": str(version),
            "max_tokens": version.max_tokens,
            "artifact_path": version.artifact_path,
        },
        "corpus": {"id": corpus.pk, "documents": corpus.documents.count()},
        "query_set": {
            "id": query_set.pk,
            "queries": query_set.queries.count(),
            "qrels": query_set.qrels.count(),
        },
        "check": {
            "metric": "ndcg@10",
            "mode": "exact",
            "value": exact,
            "expected": EXPECTED,
            "tolerance": TOLERANCE,
            "passed": passed,
        },
        "evaluations": runs,
        "embed_job": {"job": embed.pk, **embed.result},
        "ingest": ingest,
        "timings_seconds": timings,
        "machine": machine(),
        "commit": _git_commit(),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {OUT / 'result.json'}")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
