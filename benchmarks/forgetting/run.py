"""The forgetting matrix, produced by the platform's own jobs: v0 → v1 (task A) → v2 (task B).

v0 = the bundled all-MiniLM-L6-v2 indexes both corpora. v1 is fine-tuned from v0 on task A's
training judgements (SciFact train), v2 from v1 on task B's (NFCorpus train), each by a
`finetune` job with `then_policy: true`, whose `policy` job then decides each corpus's
serving (old index with none / qdc / adapter, or a shadow reindex). Then every missing cell
of the matrix (each version's queries on v0's index with each compensation, and on the index
the version built itself) is filled by `evaluate` jobs, and the matrix is read with the same
selector the dashboard's page uses (continual.selectors.forgetting_matrix), policy choices
marked. Every job runs in-process through job_execute, the worker's code path.

CPU-sized by default: each corpus is cut to --max-docs documents (the test queries'
judged documents first, then the training positives, then a random fill; judgements of
documents left out are dropped), --test-queries test queries, --train-pairs training pairs
(0: every training judgement, as a user uploads it; the finetune job draws the pairs its
steps use, and every judgement still masks its query's negatives),
--steps fine-tune steps. The numbers are of that subset, not of the full BEIR tasks.

    .venv/bin/python benchmarks/forgetting/run.py [--data ../shared/data] [--steps 8]
        [--max-docs 600] [--test-queries 100] [--train-pairs 128] [--db embedhub_forgetting]
        [--batch-size 8] [--lr 5e-5] [--negatives 0] [--max-tokens 128]
        [--tasks scifact,nfcorpus] [--also ""] [--out results]

`--tasks arguana --also scifact` fine-tunes one version on ArguAna's synthetic GenQ pairs
and scores SciFact beside it; ArguAna's corpus is set to drop each query's own document.

Writes benchmarks/forgetting/out/<--out>.json and .md (default results) and prints the
table.
`--rescore old_index_adapter` (repeatable) evaluates that option's cells again on the run
already in --db, with the same ARTIFACT_ROOT, under today's code: results-rescored.*.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks._django import ROOT, bench_user, machine, setup  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
# Each data set: its test judgements, its training judgements (a qrels file, or ArguAna's
# GenQ pairs), and whether a query's own document must be dropped when it is scored.
DATASETS = {
    "scifact": ("qrels_test.tsv", "qrels_train.tsv", False),
    "nfcorpus": ("qrels.tsv", "qrels_train.tsv", False),
    "arguana": ("qrels.tsv", "train_genq_pairs.jsonl", True),
}
OPTIONS = ("old_index_none", "old_index_qdc", "old_index_adapter", "reindexed")


# ------------------------------------------------------------------ data subsets


def qrels_read(path: Path) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for line in path.read_text().splitlines()[1:]:
        qid, did, score = line.split("\t")[:3]
        out[qid][did] = int(score)
    return dict(out)


def _names(text: str) -> list[str]:
    """A comma list of data set names, checked when the flag is parsed."""
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown data set {', '.join(unknown)}; known: {', '.join(DATASETS)}"
        )
    return names


def _tasks(args) -> list[tuple[str, str, bool]]:
    """(label, data set, trained) in order: --tasks train one version each, --also are
    indexed and scored only."""
    trained, also = args.tasks, args.also
    labels = "ABCDEFGH"
    return [(labels[i], n, i < len(trained)) for i, n in enumerate(trained + also)]


def genq_read(path: Path) -> tuple[dict[str, dict[str, int]], dict[str, dict]]:
    """ArguAna's synthetic (query, doc_id) pairs as judgements and queries, ids genq-N."""
    judged: dict[str, dict[str, int]] = {}
    queries: dict[str, dict] = {}
    ids: dict[str, str] = {}
    for line in path.open():
        pair = json.loads(line)
        qid = ids.setdefault(pair["query"], f"genq-{len(ids)}")
        queries[qid] = {"_id": qid, "text": pair["query"]}
        judged.setdefault(qid, {})[pair["doc_id"]] = 1
    return judged, queries


def _subset(folder: Path, test_file: str, train_file: str, args, work: Path) -> dict:
    """Write a corpus / test / train subset as BEIR files; returns their paths and sizes."""
    rng = random.Random(13)
    test = qrels_read(folder / test_file)
    queries = {q["_id"]: q for q in map(json.loads, (folder / "queries.jsonl").open())}
    if train_file.endswith(".jsonl"):
        train, generated = genq_read(folder / train_file)
        queries.update(generated)
    else:
        train = qrels_read(folder / train_file)
    test_q = sorted(test)
    rng.shuffle(test_q)
    test_q = test_q[: args.test_queries]
    train_pairs = sorted((q, d) for q, docs in train.items() for d, r in docs.items() if r > 0)
    rng.shuffle(train_pairs)
    if args.train_pairs > 0:  # 0 uploads every judgement; the job draws what its steps use
        train_pairs = train_pairs[: args.train_pairs]
    docs = [json.loads(line) for line in (folder / "corpus.jsonl").open()]
    by_id = {d["_id"]: d for d in docs}
    # A test query that is itself a document (ArguAna) keeps its document, so that dropping
    # it when scoring is measured as it would be on the whole corpus.
    wanted = list(
        dict.fromkeys(
            [d for q in test_q for d in test[q]]
            + [q for q in test_q if q in by_id]
            + [d for _, d in train_pairs]
        )
    )
    wanted = [d for d in wanted if d in by_id][: args.max_docs]
    rest = [d for d in by_id if d not in set(wanted)]
    rng.shuffle(rest)
    keep = set(wanted + rest[: max(0, args.max_docs - len(wanted))])
    out = work / folder.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus.jsonl").write_text("".join(json.dumps(by_id[d]) + "\n" for d in sorted(keep)))

    def write(name: str, pairs: list[tuple[str, str, int]]) -> int:
        qids = sorted({q for q, _, _ in pairs})
        (out / f"{name}-queries.jsonl").write_text(
            "".join(json.dumps(queries[q]) + "\n" for q in qids if q in queries)
        )
        (out / f"{name}-qrels.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{r}\n" for q, d, r in pairs)
        )
        return len(qids)

    test_pairs = [(q, d, r) for q in test_q for d, r in test[q].items() if d in keep]
    n_test = write("test", test_pairs)
    n_train = write("train", [(q, d, 1) for q, d in train_pairs if d in keep])
    return {"dir": out, "documents": len(keep), "test_queries": n_test, "train_queries": n_train}


# ------------------------------------------------------------------ platform steps


def _run(user, kind: str, params: dict):
    from embedhub.jobs.models import Job
    from embedhub.jobs.runner import job_execute
    from embedhub.jobs.submission import job_submit_checked

    job, _ = job_submit_checked(user=user, kind=kind, params=params)
    started = time.monotonic()
    outcome = job_execute(job_id=job.pk, worker="bench")
    job = Job.objects.get(pk=job.pk)
    print(f"  {kind} job {job.pk}: {outcome} in {time.monotonic() - started:.0f} s", flush=True)
    if outcome != "succeeded":
        raise SystemExit(f"{kind} job {job.pk} {outcome}: {job.error}")
    return job


def _seconds(job) -> float:
    return round((job.finished_at - job.started_at).total_seconds(), 1)


def _load(user, name: str, subset: dict, *, exclude_self: bool):
    from embedhub.corpora.models import Corpus
    from embedhub.corpora.services import corpus_create, corpus_delete, corpus_ingest_file
    from embedhub.evaluation.services import query_set_create
    from embedhub.vectors.services import serving_policy_settings_update

    for old in Corpus.objects.filter(owner=user, name=name):
        corpus_delete(corpus=old)
    corpus = corpus_create(owner=user, name=name)
    # As a user of an ArguAna-style corpus sets it once: every evaluation, policy candidate
    # and reindex gate of the corpus then drops each query's own document.
    serving_policy_settings_update(corpus=corpus, exclude_self=exclude_self)
    corpus_ingest_file(
        corpus_id=corpus.pk, path=subset["dir"] / "corpus.jsonl", fmt="jsonl", owner_id=user.pk
    )
    sets = {}
    for split in ("test", "train"):
        sets[split], _ = query_set_create(
            owner=user,
            corpus=corpus,
            name=split,
            queries_file=subset["dir"] / f"{split}-queries.jsonl",
            qrels_file=subset["dir"] / f"{split}-qrels.tsv",
        )
    return corpus, sets


def _finetune(user, parent, train_set, args):
    config = {
        "max_steps": args.steps,
        "batch_size": args.batch_size,
        "max_tokens": args.max_tokens,
        "lr": args.lr,
        "negatives_per_query": args.negatives,
    }
    if args.corpus_adapter_documents is not None:
        config["corpus_adapter_documents"] = args.corpus_adapter_documents
    job = _run(
        user,
        "finetune",
        {"parent": parent.pk, "query_set": train_set.pk, "config": config, "then_policy": True},
    )
    from embedhub.registry.models import ModelVersion

    return ModelVersion.objects.get(pk=job.result["model_version"]), job


def _fill(user, corpora: dict, chain: list, *, again: tuple = ()) -> list[dict]:
    """Evaluate every (task, version, option) the policy jobs did not measure, and every
    cell of the options in `again` (a rescore under today's code)."""
    from embedhub.continual.selectors import forgetting_matrix
    from embedhub.vectors.models import VectorIndex

    matrix = forgetting_matrix(user=user, leaf=chain[-1])
    have = {
        (row["version"].pk, row["option"], task.pk)
        for row in matrix["rows"]
        for task, cell in zip(matrix["tasks"], row["cells"], strict=True)
        if cell["eval_run"] and row["option"] not in again
    }
    missing = []
    for corpus, sets in corpora.values():
        old = VectorIndex.objects.filter(corpus=corpus, model_version=chain[0]).first()
        for version in chain[1:]:
            own = (
                VectorIndex.objects.filter(corpus=corpus, model_version=version)
                .exclude(state__in=["dropped", "failed", "building"])
                .first()
            )
            for option in OPTIONS:
                if (version.pk, option, sets["test"].pk) in have:
                    continue
                index = own if option == "reindexed" else old
                if index is None:
                    missing.append(
                        {
                            "corpus": corpus.name,
                            "version": version.pk,
                            "option": option,
                            "why": "no index",
                        }
                    )
                    continue
                params = {
                    "index": index.pk,
                    "query_set": sets["test"].pk,
                    "model_version": version.pk,
                }
                params["compensation"] = "none" if option == "reindexed" else option.split("_")[-1]
                try:
                    _run(user, "evaluate", params)
                except Exception as exc:  # noqa: BLE001 - a cell that cannot apply is reported
                    missing.append(
                        {
                            "corpus": corpus.name,
                            "version": version.pk,
                            "option": option,
                            "why": str(exc),
                        }
                    )
    return missing


def _table(matrix: dict, metric: str = "ndcg@10") -> str:
    head = (
        "| version | serving | "
        + " | ".join(f"{t.corpus.name} {t.name}" for t in matrix["tasks"])
        + " |"
    )
    lines = [head, "|" + "---|" * (2 + len(matrix["tasks"]))]
    for row in matrix["rows"]:
        cells = []
        for cell in row["cells"]:
            value = cell["metrics"].get(metric)
            text = "–" if value is None else f"{value:.4f}"
            cells.append(f"**{text}** ✓" if cell["chosen"] else text)
        label = f"v{row['version'].version}"
        lines.append(f"| {label} | {row['option']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--db", default="embedhub_forgetting")
    parser.add_argument(
        "--tasks",
        type=_names,
        default="scifact,nfcorpus",
        help="data sets fine-tuned on in order, one version each (" + ", ".join(DATASETS) + ")",
    )
    parser.add_argument(
        "--also", type=_names, default="", help="data sets indexed and scored, not trained"
    )
    parser.add_argument("--out", default="results", help="file name under out/, no suffix")
    parser.add_argument("--max-docs", type=int, default=600)
    parser.add_argument("--test-queries", type=int, default=100)
    parser.add_argument("--train-pairs", type=int, default=128, help="0: every training judgement")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-5)
    # The platform's own defaults are 3 mined hard negatives per query and 256 tokens; the
    # CPU-sized run trains on in-batch negatives over 128 tokens.
    parser.add_argument("--negatives", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--corpus-adapter-documents",
        type=int,
        default=None,
        help="documents per corpus the child embeds for its corpus adapter (default: the "
        "finetune job's)",
    )
    parser.add_argument(
        "--rescore",
        action="append",
        choices=OPTIONS,
        help="evaluate this option's cells again on the finished run in --db (with its "
        "ARTIFACT_ROOT) under today's code; writes results-rescored.*",
    )
    args = parser.parse_args()
    started = time.monotonic()
    setup(args.db)
    if args.rescore:
        return _rescore(args, started)
    from embedhub.continual.selectors import forgetting_matrix
    from embedhub.registry.services import model_version_default

    user = bench_user("forgetting")
    work = OUT / "work"
    corpora, subsets = {}, {}
    for task, name, _ in _tasks(args):
        test_file, train_file, exclude_self = DATASETS[name]
        subsets[task] = _subset(args.data / name, test_file, train_file, args, work)
        corpora[task] = _load(user, f"{name}-{task}", subsets[task], exclude_self=exclude_self)
        print(f"task {task}: {name}, {subsets[task]}", flush=True)
    v0 = model_version_default()
    for corpus, _ in corpora.values():
        _run(user, "embed", {"corpus": corpus.pk, "model_version": v0.pk, "activate": True})
    from embedhub.jobs.models import Job

    chain, finetunes, policies = [v0], [], []
    for task, _, trained in _tasks(args):
        if not trained:
            continue
        version, finetune = _finetune(user, chain[-1], corpora[task][1]["train"], args)
        policies.append(_run_existing(Job.objects.get(pk=finetune.result["policy_job"])))
        chain.append(version)
        finetunes.append(finetune)
    missing = _fill(user, corpora, chain)
    matrix = forgetting_matrix(user=user, leaf=chain[-1])
    table = _table(matrix)
    print("\n" + table)
    result = {
        "machine": machine(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "subsets": {k: {**v, "dir": str(v["dir"])} for k, v in subsets.items()},
        "versions": {f"v{i}": v.pk for i, v in enumerate(chain)},
        "finetune_seconds": [_seconds(job) for job in finetunes],
        "policy_decisions": [
            {c["corpus_name"]: (c.get("chosen"), c.get("reason")) for c in p.result["corpora"]}
            for p in policies
        ],
        "unmeasured": missing,
        "table": table,
        "seconds": round(time.monotonic() - started, 1),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.out}.json").write_text(json.dumps(result, indent=2, default=str))
    (OUT / f"{args.out}.md").write_text(table + "\n")
    print(json.dumps(result["policy_decisions"], indent=2))
    print(f"unmeasured: {missing}\n{result['seconds']} s on {result['machine']}")
    return 0


def _rescore(args, started: float) -> int:
    """Re-evaluate the --rescore options' cells of the run already in --db."""
    from embedhub.continual.selectors import forgetting_matrix
    from embedhub.corpora.models import Corpus
    from embedhub.registry.models import ModelVersion
    from embedhub.registry.services import model_version_default

    user = bench_user("forgetting")
    corpora = {}
    for task, name, _ in _tasks(args):
        corpus = Corpus.objects.get(owner=user, name=f"{name}-{task}")
        corpora[task] = (corpus, {qs.name: qs for qs in corpus.query_sets.all()})
    chain = [model_version_default(), *ModelVersion.objects.filter(owner=user).order_by("pk")]
    missing = _fill(user, corpora, chain, again=tuple(args.rescore))
    table = _table(forgetting_matrix(user=user, leaf=chain[-1]))
    print("\n" + table)
    result = {
        "machine": machine(),
        "db": args.db,
        "rescored": args.rescore,
        "unmeasured": missing,
        "table": table,
        "seconds": round(time.monotonic() - started, 1),
    }
    (OUT / "results-rescored.json").write_text(json.dumps(result, indent=2, default=str))
    (OUT / "results-rescored.md").write_text(table + "\n")
    return 0


def _run_existing(job):
    """Execute a job another job submitted (the finetune's policy job)."""
    from embedhub.jobs.models import Job
    from embedhub.jobs.runner import job_execute

    started = time.monotonic()
    outcome = job_execute(job_id=job.pk, worker="bench")
    job = Job.objects.get(pk=job.pk)
    print(f"  {job.kind} job {job.pk}: {outcome} in {time.monotonic() - started:.0f} s", flush=True)
    if outcome != "succeeded":
        raise SystemExit(f"{job.kind} job {job.pk} {outcome}: {job.error}")
    return job


if __name__ == "__main__":
    raise SystemExit(main())
