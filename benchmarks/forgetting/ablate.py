"""Which part of a fine-tune's recipe helps or damages its corpus: one knob at a time, pure compute.

Replays the finetune job's recipe outside the platform: from the bundled model, the
pairs the job draws from every training judgement (`max_steps` × `batch_size`, seeded),
hard negatives mined by the parent skipping its top few with every judgement excluded,
distillation targets from the parent's document vectors, every judged positive masked.
Each variant changes one setting of FinetuneConfig; each child then re-encodes the corpus
("reindexed") and the test queries, scored by nDCG@10 as the evaluate job scores them
(top 100 per query), beside the child's queries on the parent's vectors ("old index").

    .venv/bin/python benchmarks/forgetting/ablate.py [--data ../shared/data]
        [--corpus nfcorpus] [--variant base] [--variant temperature=0.02] [--steps 58]

The corpus needs a `qrels_train.tsv` (scifact, nfcorpus). Writes
benchmarks/forgetting/out/ablate-<corpus>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks._django import machine  # noqa: E402
from benchmarks.forgetting.run import qrels_read  # noqa: E402
from workers.ml.encoder import Encoder  # noqa: E402
from workers.ml.metrics import evaluate_run  # noqa: E402
from workers.ml.search import topk_cosine  # noqa: E402
from workers.ml.spec import default_model_path, read_model_spec  # noqa: E402
from workers.ml.training import (  # noqa: E402
    DistillTargets,
    FinetuneConfig,
    TrainPair,
    finetune,
    known_positives,
    mine_hard_negatives,
    pairs_drawn,
)

OUT = Path(__file__).resolve().parent / "out"


def _corpus(folder: Path) -> tuple[list[str], list[str]]:
    """(document ids, the texts an index embeds: title, a space, text)."""
    docs = [json.loads(line) for line in (folder / "corpus.jsonl").open()]
    texts = [f"{d['title']} {d['text']}" if d.get("title") else d["text"] for d in docs]
    return [d["_id"] for d in docs], texts


def _ndcg(*, qvecs, doc_vecs, doc_ids, qids, qrels) -> float:
    rows, scores = topk_cosine(qvecs, doc_vecs, k=100)
    run = {
        q: {doc_ids[r]: float(s) for r, s in zip(rr, ss, strict=True) if r >= 0}
        for q, rr, ss in zip(qids, rows, scores, strict=True)
    }
    return evaluate_run(qrels=qrels, run=run).aggregate["ndcg@10"]


def _pairs(*, judged, texts_of, doc_text, doc_vecs, doc_row, parent, args) -> tuple:
    """The drawn pairs with mined negatives, and every judged positive per query text."""
    source = [TrainPair(query=texts_of[q], positive=doc_text[doc_row[d]]) for q, d in judged]
    known = known_positives(source)
    drawn = pairs_drawn(source, config=_config(args))  # the job's draw
    queries = list(dict.fromkeys(p.query for p in drawn))
    row_of = {t: i for i, t in enumerate(doc_text)}
    mined = mine_hard_negatives(
        query_vecs=parent.encode(queries, kind="query"),
        doc_vecs=doc_vecs,
        positives=[{row_of[t] for t in known[q]} for q in queries],
        k=3,
        skip_top=3,
    )
    negatives = {q: [doc_text[r] for r in rows] for q, rows in zip(queries, mined, strict=True)}
    for p in drawn:
        p.negatives = list(negatives[p.query])
    return drawn, known


def _config(args, **change) -> FinetuneConfig:
    return FinetuneConfig(max_steps=args.steps, batch_size=args.batch_size, **change)


def _variant(spec: str) -> tuple[str, dict]:
    if spec == "base":
        return spec, {}
    key, value = spec.split("=")
    return spec, {key: type(getattr(FinetuneConfig(), key))(value)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--corpus", default="nfcorpus", help="a folder under --data")
    parser.add_argument("--variant", action="append", default=None)
    parser.add_argument("--steps", type=int, default=58)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    folder = args.data / args.corpus
    doc_ids, doc_text = _corpus(folder)
    doc_row = {d: i for i, d in enumerate(doc_ids)}
    texts_of = {q["_id"]: q["text"] for q in map(json.loads, (folder / "queries.jsonl").open())}
    train = qrels_read(folder / "qrels_train.tsv")
    judged = sorted(
        (q, d)
        for q, docs in train.items()
        for d, r in docs.items()
        if r > 0 and q in texts_of and d in doc_row
    )
    test = {
        q: {d: r for d, r in docs.items() if d in doc_row}
        for q, docs in qrels_read(folder / "qrels.tsv").items()
        if q in texts_of and any(d in doc_row and r > 0 for d, r in docs.items())
    }
    qids = sorted(test)
    parent_path = default_model_path()
    parent = Encoder(read_model_spec(parent_path))
    started = time.monotonic()
    doc_vecs = parent.encode(doc_text)
    parent_q = parent.encode([texts_of[q] for q in qids], kind="query")
    report: dict = {
        "machine": machine(),
        "corpus": args.corpus,
        "steps": args.steps,
        "variants": {},
    }
    report["parent"] = _ndcg(
        qvecs=parent_q, doc_vecs=doc_vecs, doc_ids=doc_ids, qids=qids, qrels=test
    )
    print(f"parent {report['parent']:.4f} ({time.monotonic() - started:.0f} s)", flush=True)
    pairs, known = _pairs(
        judged=judged,
        texts_of=texts_of,
        doc_text=doc_text,
        doc_vecs=doc_vecs,
        doc_row=doc_row,
        parent=parent,
        args=args,
    )
    targets = DistillTargets(documents=dict(zip(doc_text, doc_vecs, strict=True)))
    for name, change in map(_variant, args.variant or ["temperature=0.02", "temperature=0.05"]):
        config = _config(args, **change)
        t = time.monotonic()
        with tempfile.TemporaryDirectory() as out:
            finetune(
                parent_path=parent_path,
                pairs=pairs,
                out_dir=out,
                config=config,
                targets=targets,
                known=known,
            )
            child = Encoder(read_model_spec(out))
            child_q = child.encode([texts_of[q] for q in qids], kind="query")
            child_docs = child.encode(doc_text)
        scores = {
            "reindexed": _ndcg(
                qvecs=child_q, doc_vecs=child_docs, doc_ids=doc_ids, qids=qids, qrels=test
            ),
            "old_index_none": _ndcg(
                qvecs=child_q, doc_vecs=doc_vecs, doc_ids=doc_ids, qids=qids, qrels=test
            ),
            "seconds": round(time.monotonic() - t, 1),
        }
        report["variants"][name] = scores
        print(name, json.dumps(scores), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"ablate-{args.corpus}.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
