"""How far a query-side ranking map can bring the old index towards a reindex on one corpus:
a sweep of fit_ranking_map's settings on the vectors a finished forgetting run left behind.

Reads, from the database of a `benchmarks/forgetting/run.py` run (its --db, with the same
ARTIFACT_ROOT): the corpus's old index (built by the root version) and its reindex (built
by the fine-tuned child), the corpus's test queries and judgements. The child's own
vectors of every document are the reindex's, so no document is embedded again; only the
queries are. Each setting's map is fitted label-free, as the finetune job fits it (the
corpus's query texts and the documents as pseudo-queries), and scored by nDCG@10 on the
test queries against the old index, beside raw child queries, the root's own queries and
the reindex.

    ARTIFACT_ROOT=var/artifacts-arguana-full10k .venv/bin/python \\
        benchmarks/adapter/ranking_sweep.py --db embedhub_forgetting_arguana_10k \\
        --corpus arguana-A --out sweep-arguana.json

Prints the table and writes out/<--out>. Exploration only: the platform's defaults are
RANKING_STEPS, RANKING_LR and RANKING_TEMPERATURE in workers/ml/adapter.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks._django import setup  # noqa: E402
from workers.ml.adapter import fit_ranking_map, normalize  # noqa: E402
from workers.ml.metrics import evaluate_run  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
TEACH_QUERIES = 1000  # as CORPUS_ADAPTER_QUERIES: the corpus's query texts, label-free


def _stable(values: list[str], n: int) -> list[str]:
    return sorted(values, key=lambda v: hashlib.md5(v.encode()).hexdigest())[:n]


def _load(corpus_name: str) -> dict:
    """Old and new index vectors of every document, test queries and judgements."""
    from embedhub.corpora.models import Corpus
    from embedhub.evaluation import selectors as evaluation_selectors
    from embedhub.evaluation.models import QuerySet
    from embedhub.vectors import selectors as vector_selectors
    from embedhub.vectors.models import ServingPolicy, VectorIndex

    corpus = Corpus.objects.get(name=corpus_name)
    # The old index is retired once the policy swapped the reindex in; its table stays.
    built = VectorIndex.objects.filter(corpus=corpus, state__in=["ready", "retired"])
    indexes = built.order_by("model_version__version", "pk")
    old, new = indexes.first(), indexes.last()
    ids = list(corpus.documents.order_by("pk").values_list("pk", flat=True))
    external = dict(corpus.documents.values_list("pk", "external_id"))
    old_vecs = vector_selectors.index_vectors_of(index=old, document_ids=ids)
    new_vecs = vector_selectors.index_vectors_of(index=new, document_ids=ids)
    ids = [i for i in ids if i in old_vecs and i in new_vecs]
    test = QuerySet.objects.get(corpus=corpus, name="test")
    texts = dict(evaluation_selectors.query_set_queries(query_set=test))
    qrels = evaluation_selectors.query_set_qrels(query_set=test)
    all_texts = QuerySet.objects.filter(corpus=corpus).values_list("queries__text", flat=True)
    return {
        "old": old,
        "new": new,
        "ids": [external[i] for i in ids],
        "P": np.stack([old_vecs[i] for i in ids]),
        "C": np.stack([new_vecs[i] for i in ids]),
        "test": {q: texts[q] for q in qrels if q in texts},
        "qrels": qrels,
        "teach": _stable(sorted({t for t in all_texts if t}), TEACH_QUERIES),
        "exclude_self": ServingPolicy.objects.filter(corpus=corpus, exclude_self=True).exists(),
    }


def _ndcg(queries: np.ndarray, docs: np.ndarray, data: dict, *, k: int = 10) -> float:
    scores = normalize(queries) @ normalize(docs).T
    run = {}
    qids = list(data["test"])
    for row, qid in enumerate(qids):
        top = np.argpartition(-scores[row], k + 1)[: k + 1]
        hits = {data["ids"][j]: float(scores[row, j]) for j in top}
        if data["exclude_self"]:
            hits.pop(qid, None)
        run[qid] = dict(sorted(hits.items(), key=lambda h: -h[1])[:k])
    return round(evaluate_run(qrels=data["qrels"], run=run).aggregate["ndcg@10"], 4)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--corpus", required=True, help="the corpus's name in that run")
    parser.add_argument("--steps", default="100,300", help="comma-separated")
    parser.add_argument("--lrs", default="0.001,0.003")
    parser.add_argument("--temperatures", default="0.02,0.05")
    parser.add_argument("--pseudo-queries", type=int, default=3000, help="documents as queries")
    parser.add_argument("--out", default="sweep.json")
    args = parser.parse_args()
    setup(args.db)
    from embedhub.registry.encoders import encoder_for

    started = time.monotonic()
    data = _load(args.corpus)
    texts = list(data["test"].values())
    child = encoder_for(model_version=data["new"].model_version)
    root = encoder_for(model_version=data["old"].model_version)
    q_child = child.encode(texts, kind="query")
    teach = np.concatenate(
        [
            child.encode(data["teach"], kind="query"),
            data["C"][np.random.default_rng(0).permutation(len(data["C"]))][: args.pseudo_queries],
        ]
    )
    rows = {
        "root queries, old index": _ndcg(root.encode(texts, kind="query"), data["P"], data),
        "child raw, old index": _ndcg(q_child, data["P"], data),
        "child, reindex": _ndcg(q_child, data["C"], data),
    }
    for steps in map(int, args.steps.split(",")):
        for lr in map(float, args.lrs.split(",")):
            for temperature in map(float, args.temperatures.split(",")):
                fitted = fit_ranking_map(
                    queries=teach,
                    parent_docs=data["P"],
                    child_docs=data["C"],
                    steps=steps,
                    lr=lr,
                    temperature=temperature,
                )
                name = f"ranking map: {steps} steps, lr {lr:g}, T {temperature:g}"
                rows[name] = _ndcg(fitted.apply(q_child), data["P"], data)
                print(f"{name}: {rows[name]}", flush=True)
    result = {
        "db": args.db,
        "corpus": args.corpus,
        "documents": len(data["ids"]),
        "test_queries": len(texts),
        "exclude_self": data["exclude_self"],
        "ndcg@10": rows,
        "seconds": round(time.monotonic() - started, 1),
    }
    OUT.mkdir(exist_ok=True)
    (OUT / args.out).write_text(json.dumps(result, indent=2))
    for name, value in rows.items():
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
