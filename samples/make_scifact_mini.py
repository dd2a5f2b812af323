"""Regenerate samples/scifact-mini: a BEIR-format slice of SciFact small enough for a CPU demo.

30 test queries, every document they judge relevant, and random other documents up to
300 in all. Deterministic (fixed seed), so the committed files can be rebuilt exactly:

    python samples/make_scifact_mini.py [/path/to/scifact] [--queries 30] [--docs 300]

The source folder holds BEIR's corpus.jsonl, queries.jsonl and qrels_test.tsv (or
qrels/test.tsv). SciFact is CC BY-NC 2.0 (Wadden et al., 2020).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parent.parent / "shared" / "data" / "scifact"  # ../shared beside the repo
SEED = 13


def _qrels_file(source: Path) -> Path:
    for candidate in (source / "qrels_test.tsv", source / "qrels" / "test.tsv"):
        if candidate.exists():
            return candidate
    raise SystemExit(f"no qrels_test.tsv or qrels/test.tsv under {source}")


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    return qrels


def _read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def build(source: Path, target: Path, n_queries: int, n_docs: int) -> dict:
    rng = random.Random(SEED)
    qrels = _read_qrels(_qrels_file(source))
    query_ids = sorted(qrels, key=int)
    chosen = sorted(rng.sample(query_ids, n_queries), key=int)
    relevant = {doc for q in chosen for doc in qrels[q]}
    corpus = _read_jsonl(source / "corpus.jsonl")
    others = [d["_id"] for d in corpus if d["_id"] not in relevant]
    keep = relevant | set(rng.sample(others, max(n_docs - len(relevant), 0)))
    queries = {q["_id"]: q for q in _read_jsonl(source / "queries.jsonl")}

    (target / "qrels").mkdir(parents=True, exist_ok=True)
    with open(target / "corpus.jsonl", "w") as f:
        for doc in corpus:  # source order, so the file diff stays readable
            if doc["_id"] in keep:
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    with open(target / "queries.jsonl", "w") as f:
        for q in chosen:
            f.write(json.dumps(queries[q], ensure_ascii=False) + "\n")
    with open(target / "qrels" / "test.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q in chosen:
            for doc, score in sorted(qrels[q].items()):
                f.write(f"{q}\t{doc}\t{score}\n")
    return {"queries": len(chosen), "documents": len(keep), "relevant": len(relevant)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--target", type=Path, default=HERE / "scifact-mini")
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--docs", type=int, default=300)
    args = parser.parse_args()
    print(build(args.source, args.target, args.queries, args.docs))


if __name__ == "__main__":
    main()
