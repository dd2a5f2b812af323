"""GASLITE knows-what benchmark on SciFact with all-MiniLM-L6-v2.

For each concept (SciFact queries matching a topic regex, all splits), split the queries
50/50 into held-in / held-out, k-means the held-in query embeddings into `--budget`
targets, optimise one adversarial passage per target, and report held-out appeared@k
against the real SciFact index for: GASLITE passages, the message alone, and the centroid
vectors themselves (a perfect passage, the ceiling).

    .venv/bin/python benchmarks/gaslite/run.py                        # CPU-scaled settings
    .venv/bin/python benchmarks/gaslite/run.py --full --device cuda   # paper-like, on a GPU

Writes benchmarks/gaslite/out/results.json and results.md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from workers.ml.gaslite import (  # noqa: E402
    AttackConfig,
    Attacker,
    evaluate_passages,
    kmeans_targets,
    split_held_in_out,
)
from workers.ml.geometry import geometry_report  # noqa: E402
from workers.ml.spec import default_model_path  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "scifact"  # beside the repo; --data overrides
OUT = Path(__file__).resolve().parent / "out"
DEPTH = 100
# Topic regexes over the query text (case-insensitive, word-start anchored). Counts on the
# 1,109 SciFact queries: cancer 111, infection 60, cardio 35, diabetes 33.
CONCEPTS = {
    "cancer": r"\b(cancer|tumou?r|carcinoma|metasta)",
    "infection": r"\b(hiv|virus|viral|infection)",
    "cardio": r"(\bheart|cardi)",
    "diabetes": r"\b(diabet|insulin|glucose)",
}
MESSAGE = "Visit BestShoes.com for cheap running shoes"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--concepts",
        nargs="+",
        default=["cancer", "infection", "cardio"],
        help="names from the built-in list, or name=regex",
    )
    p.add_argument("--budget", type=int, default=10, help="passages per concept (k-means)")
    p.add_argument("--data", type=Path, default=DATA, help="the SciFact folder (BEIR format)")
    p.add_argument("--message", default=MESSAGE)
    p.add_argument("--trigger-len", type=int, default=30)
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--positions", type=int, default=10)
    p.add_argument("--candidates", type=int, default=32)
    p.add_argument("--candidates-top", type=int, default=256)
    p.add_argument("--grad-copies", type=int, default=10)
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="seconds per passage (stops the attack early; CPU runs)",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="paper settings: 100 iterations, 20 positions, 64+64 candidates, 50 copies",
    )
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    return p.parse_args()


def attack_config(args: argparse.Namespace) -> AttackConfig:
    if args.full:
        return AttackConfig(
            trigger_len=args.trigger_len,
            iterations=100,
            positions_per_iter=20,
            candidates_top=256,
            n_candidates=128,
            grad_copies=50,
            time_limit_s=args.time_limit,
            seed=args.seed,
        )
    return AttackConfig(
        trigger_len=args.trigger_len,
        iterations=args.iterations,
        positions_per_iter=args.positions,
        candidates_top=args.candidates_top,
        n_candidates=args.candidates,
        grad_copies=args.grad_copies,
        time_limit_s=args.time_limit,
        seed=args.seed,
    )


def read_jsonl(path: Path) -> list[dict]:
    with path.open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


def corpus_vectors(attacker: Attacker, out: Path) -> np.ndarray:
    """Encode the corpus once (title + " " + text, truncated to the model's 256 tokens)."""
    cache = out / "scifact_minilm_docs.npy"
    docs = read_jsonl(DATA / "corpus.jsonl")
    if cache.exists():
        vecs = np.load(cache)
        if len(vecs) == len(docs):
            return vecs
    texts = [(d.get("title", "") + " " + d.get("text", "")).strip() for d in docs]
    order = np.argsort([len(t) for t in texts])  # similar lengths per batch: less padding
    started = time.monotonic()
    sorted_vecs = attacker.embed_texts([texts[i] for i in order], batch_size=32)
    vecs = np.empty_like(sorted_vecs)
    vecs[order] = sorted_vecs
    print(f"encoded {len(texts)} docs in {time.monotonic() - started:.0f}s", flush=True)
    np.save(cache, vecs)
    return vecs


def concept_queries(spec: str, queries: list[dict]) -> tuple[str, str, list[dict]]:
    name, _, pattern = spec.partition("=")
    pattern = pattern or CONCEPTS[name]
    regex = re.compile(pattern, re.IGNORECASE)
    return name, pattern, [q for q in queries if regex.search(q["text"])]


def topk(query_vecs: np.ndarray, doc_vecs: np.ndarray) -> np.ndarray:
    scores = query_vecs @ doc_vecs.T
    return -np.sort(-scores, axis=1)[:, :DEPTH]


def run_concept(attacker, spec, queries, doc_vecs, args, config) -> dict:
    name, pattern, members = concept_queries(spec, queries)
    held_in, held_out = split_held_in_out(members, held_in=0.5, seed=args.seed)
    vin = attacker.embed_texts([q["text"] for q in held_in], kind="query")
    vout = attacker.embed_texts([q["text"] for q in held_out], kind="query")
    budget = min(args.budget, len(held_in))
    targets = kmeans_targets(vin, n=budget, seed=args.seed)
    print(
        f"[{name}] {len(members)} queries ({len(held_in)} in / {len(held_out)} out), "
        f"{budget} passages",
        flush=True,
    )
    passages = []
    for i, target in enumerate(targets):
        res = attacker.attack(target=target, message=args.message, config=config)
        print(
            f"  passage {i + 1}/{budget}: cos {res.initial_cosine:.3f} -> {res.best_cosine:.3f}"
            f" in {res.iterations_run} it, {res.seconds:.0f}s",
            flush=True,
        )
        passages.append(res)
    gaslite_vecs = attacker.embed_texts([p.text for p in passages])  # from text, as indexed
    message_vecs = attacker.embed_texts([args.message])
    systems = {"gaslite": gaslite_vecs, "message_only": message_vecs, "centroid": targets}
    result = {
        "name": name,
        "pattern": pattern,
        "n_queries": len(members),
        "n_held_in": len(held_in),
        "n_held_out": len(held_out),
        "budget": budget,
    }
    for split, qv in (("held_out", vout), ("held_in", vin)):
        real = topk(qv, doc_vecs)
        for system, pv in systems.items():
            metrics = evaluate_passages(passage_vecs=pv, query_vecs=qv, topk_scores=real)
            metrics.pop("best_ranks")
            result[f"{split}/{system}"] = metrics
    result["passages"] = [
        {
            "text": p.text,
            "initial_cosine": p.initial_cosine,
            "best_cosine": p.best_cosine,
            "iterations_run": p.iterations_run,
            "seconds": p.seconds,
            "curve": p.objective_curve,
        }
        for p in passages
    ]
    return result


def markdown(results: list[dict], meta: dict) -> str:
    lines = [
        f"GASLITE on SciFact, {meta['model']}, budget {meta['budget']} passages/concept, "
        f'message: "{meta["message"]}"',
        f"settings: {meta['config']}",
        f"machine: {meta['machine']}",
        "",
        "| concept | queries (in/out) | GASLITE held-out appeared@10 | message only | centroid"
        " | GASLITE MRR@10 | GASLITE held-in appeared@10 | cosine to target (before -> after)"
        " | s / passage | iterations run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ps = r["passages"]
        lines.append(
            f"| {r['name']} | {r['n_queries']} ({r['n_held_in']}/{r['n_held_out']})"
            f" | {r['held_out/gaslite']['appeared@10']:.1%}"
            f" | {r['held_out/message_only']['appeared@10']:.1%}"
            f" | {r['held_out/centroid']['appeared@10']:.1%}"
            f" | {r['held_out/gaslite']['mrr@10']:.3f}"
            f" | {r['held_in/gaslite']['appeared@10']:.1%}"
            f" | {np.mean([p['initial_cosine'] for p in ps]):.3f} ->"
            f" {np.mean([p['best_cosine'] for p in ps]):.3f}"
            f" | {np.mean([p['seconds'] for p in ps]):.0f}"
            f" | {np.mean([p['iterations_run'] for p in ps]):.1f} |"
        )
    g = meta["geometry"]
    lines += [
        "",
        f"index geometry: {g['n_docs']} docs, mean random-pair cosine "
        f"{g['mean_random_pair_cosine']:.3f}, query 10th-neighbour similarity median "
        f"{g['tenth_neighbour_quantiles']['q50']:.3f} "
        f"(5%-95%: {g['tenth_neighbour_quantiles']['q05']:.3f}-"
        f"{g['tenth_neighbour_quantiles']['q95']:.3f}); total wall time {meta['seconds']:.0f}s",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    global DATA  # the loaders below read the chosen folder
    args = parse_args()
    DATA = args.data
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    config = attack_config(args)
    attacker = Attacker.from_path(default_model_path(), device=args.device)
    doc_vecs = corpus_vectors(attacker, args.out)
    queries = read_jsonl(DATA / "queries.jsonl")
    all_q = attacker.embed_texts([q["text"] for q in queries], kind="query")
    geometry = geometry_report(
        doc_vecs=doc_vecs, query_vecs=all_q, topk_scores=topk(all_q, doc_vecs)
    )
    results = [run_concept(attacker, c, queries, doc_vecs, args, config) for c in args.concepts]
    meta = {
        "model": "all-MiniLM-L6-v2",
        "budget": args.budget,
        "message": args.message,
        "config": config.__dict__,
        "geometry": geometry,
        "seconds": time.monotonic() - started,
        "machine": f"{platform.processor() or platform.machine()}, torch threads "
        f"{torch.get_num_threads()}, device {attacker.device}",
    }
    (args.out / "results.json").write_text(
        json.dumps({"meta": meta, "concepts": results}, indent=1)
    )
    table = markdown(results, meta)
    (args.out / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
