"""How many of a fine-tune's negatives are judged positives: a census of the forgetting run's
training batches (pure compute: the bundled model and numpy, no database).

For a task's training judgements it replays what the finetune job does with a query set:
the pairs in the job's order, the batches `plan_batches` draws, the hard negatives
`mine_hard_negatives` picks from the parent's document vectors (skipping the top few),
and the in-batch documents the loss treats as negatives. Each negative is then looked up in
the task's *full* training judgements. Two query sets are compared:
- `sample`: the forgetting run's cut (--train-pairs judgements, as run.py uploads it), so
  mining and masking know only the sampled positives;
- `full`: every training judgement uploaded, the same number of steps drawing from all of
  them (a seeded draw like the job's, not the job's own: the shares are what compare).
Documents are matched by id here, by text in the platform: the same on these corpora.

    .venv/bin/python benchmarks/forgetting/negatives.py [--data ../shared/data]
        [--task nfcorpus] [--train-pairs 928] [--steps 58] [--batch-size 16]

Prints and writes benchmarks/forgetting/out/negatives-<task>.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.forgetting.run import qrels_read  # noqa: E402
from workers.ml.encoder import Encoder  # noqa: E402
from workers.ml.spec import default_model_path, read_model_spec  # noqa: E402
from workers.ml.training import mine_hard_negatives, plan_batches  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def _judged(qrels: dict[str, dict[str, int]]) -> list[tuple[str, str]]:
    return sorted((q, d) for q, docs in qrels.items() for d, r in docs.items() if r > 0)


def _census(
    *,
    pairs: list[tuple[str, str]],
    batches: list[list[int]],
    mined: dict[str, list[str]],
    truth: dict[str, set[str]],
    known: dict[str, set[str]],
    score: Callable[[str, str], float],
) -> dict:
    """Share of the negatives each query meets that the full judgements call relevant, under
    three masks: today's (only the query's own pairs in the batch), every positive the query
    set knows, and that plus the parent's guide (a negative the parent scores at least as
    high as the positive is masked)."""
    counts = {mask: defaultdict(int) for mask in ("today", "known", "guided")}
    for batch in batches:
        in_batch = {pairs[i][1] for i in batch} | {d for i in batch for d in mined[pairs[i][0]]}
        for i in batch:
            q, pos = pairs[i]
            own = {pairs[j][1] for j in batch if pairs[j][0] == q}
            for d in in_batch - {pos}:
                kind = "mined" if d in mined[q] else "in_batch"
                masked = {
                    "today": d in own,
                    "known": d in known[q],
                    "guided": d in known[q] or score(q, d) >= score(q, pos),
                }
                for mask, hidden in masked.items():
                    tally = counts[mask]
                    tally[f"{kind}_masked"] += hidden
                    tally[f"{kind}_masked_unjudged"] += hidden and d not in truth[q]
                    if not hidden:
                        tally[f"{kind}_negatives"] += 1
                        tally[f"{kind}_judged_positive"] += d in truth[q]
    for tally in counts.values():
        for kind in ("in_batch", "mined"):
            tally[f"{kind}_share"] = round(
                tally[f"{kind}_judged_positive"] / max(tally[f"{kind}_negatives"], 1), 4
            )
    return {mask: dict(tally) for mask, tally in counts.items()}


def _mine(
    *,
    queries: list[str],
    doc_ids: list[str],
    doc_vecs: np.ndarray,
    qvecs: np.ndarray,
    known: dict[str, set[str]],
    k: int,
    skip_top: int,
) -> dict[str, list[str]]:
    row = {d: i for i, d in enumerate(doc_ids)}
    picked = mine_hard_negatives(
        query_vecs=qvecs,
        doc_vecs=doc_vecs,
        positives=[{row[d] for d in known[q] if d in row} for q in queries],
        k=k,
        skip_top=skip_top,
    )
    return {q: [doc_ids[r] for r in rows] for q, rows in zip(queries, picked, strict=True)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--task", default="nfcorpus")
    parser.add_argument("--test-file", default=None, help="qrels_test.tsv or qrels.tsv")
    parser.add_argument("--train-pairs", type=int, default=928)
    parser.add_argument("--test-queries", type=int, default=400)
    parser.add_argument("--steps", type=int, default=58)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--negatives", type=int, default=3)
    parser.add_argument("--skip-top", type=int, default=3)
    args = parser.parse_args()
    folder = args.data / args.task
    test_file = args.test_file or (
        "qrels_test.tsv" if (folder / "qrels_test.tsv").exists() else "qrels.tsv"
    )
    truth_qrels = qrels_read(folder / "qrels_train.tsv")
    judged = _judged(truth_qrels)
    # run.py's random cut, replayed: one Random(13) shuffles the test ids, then the pairs.
    rng = random.Random(13)
    rng.shuffle(sorted(qrels_read(folder / test_file)))
    shuffled = list(judged)
    rng.shuffle(shuffled)
    sample = sorted(shuffled[: args.train_pairs])
    docs = [json.loads(line) for line in (folder / "corpus.jsonl").open()]
    doc_ids = [d["_id"] for d in docs]
    texts = {q["_id"]: q["text"] for q in map(json.loads, (folder / "queries.jsonl").open())}
    encoder = Encoder(read_model_spec(default_model_path()))
    print(f"encoding {len(docs)} documents", flush=True)
    # The text an index embeds (vectors.selectors.document_text): title, a space, text.
    doc_vecs = encoder.encode(
        [f"{d['title']} {d['text']}" if d.get("title") else d["text"] for d in docs]
    )
    row = {d: i for i, d in enumerate(doc_ids)}
    truth = defaultdict(set)
    for q, d in judged:
        truth[q].add(d)
    report = {"task": args.task, "args": {k: str(v) for k, v in vars(args).items()}}
    for name, pairs in (("sample", sample), ("full", judged)):
        # As the platform does, judgements naming unknown queries or documents are skipped.
        pairs = [(q, d) for q, d in pairs if q in texts and d in row]
        known = defaultdict(set)
        for q, d in pairs:
            known[q].add(d)
        batches = plan_batches(
            n_pairs=len(pairs), batch_size=args.batch_size, total_steps=args.steps, seed=0
        )
        used = sorted({pairs[i][0] for b in batches for i in b})
        qvecs = encoder.encode([texts[q] for q in used], kind="query")
        qvec_of = dict(zip(used, qvecs, strict=True))
        mined = _mine(
            queries=used,
            doc_ids=doc_ids,
            doc_vecs=doc_vecs,
            qvecs=qvecs,
            known=known,
            k=args.negatives,
            skip_top=args.skip_top,
        )
        report[name] = {
            "pairs": len(pairs),
            "queries_trained": len(used),
            **_census(
                pairs=pairs,
                batches=batches,
                mined=mined,
                truth=truth,
                known=known,
                score=lambda q, d, of=qvec_of: float(of[q] @ doc_vecs[row[d]]),
            ),
        }
        print(name, json.dumps(report[name]), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"negatives-{args.task}.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
