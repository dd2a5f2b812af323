"""Detecting GASLITE passages on SciFact (all-MiniLM-L6-v2): the screen the platform runs
at ingest (text features) plus hubness, calibrated on SciFact's own documents.

For each concept (as in benchmarks/gaslite: SciFact queries matching a topic regex, split
50/50 held-in / held-out with the same seed), craft GASLITE passages (plain, and adaptive:
tokens restricted to corpus words and a naturalness penalty in the objective), then report

- each detector's recall at 1 % and 5 % false positives, thresholds set on calibration
  documents the language statistics never saw, and the rate measured on other unseen
  documents (test split);
- held-out appeared@10 without screening and with the combined screen at 1 %.

The defender's known queries (for hubness) are all SciFact queries except the concept's
held-out ones (those stand for the future queries the attack is judged on).

    .venv/bin/python benchmarks/defence/run.py --budget 5 --time-limit 20
    .venv/bin/python benchmarks/defence/run.py --stored benchmarks/gaslite/out/results.json

Writes benchmarks/defence/out/results.json and results.md.
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

from workers.ml.detectors import (  # noqa: E402
    COMBINED,
    HUBNESS,
    Calibration,
    hubness,
    recall_report,
    screen_fit,
    split_fit_calibrate,
    threshold_at_fpr,
)
from workers.ml.gaslite import (  # noqa: E402
    AttackConfig,
    Attacker,
    evaluate_passages,
    kmeans_targets,
    split_held_in_out,
)
from workers.ml.spec import default_model_path  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
DEPTH = 100
CONCEPTS = {
    "cancer": r"\b(cancer|tumou?r|carcinoma|metasta)",
    "infection": r"\b(hiv|virus|viral|infection)",
    "cardio": r"(\bheart|cardi)",
    "diabetes": r"\b(diabet|insulin|glucose)",
}
MESSAGE = "Visit BestShoes.com for cheap running shoes"
HUB_K = 10


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--concepts", nargs="+", default=["cancer", "infection", "cardio"])
    p.add_argument("--budget", type=int, default=5, help="passages per concept and variant")
    p.add_argument("--time-limit", type=float, default=20.0, help="seconds per passage")
    p.add_argument("--trigger-len", type=int, default=30)
    p.add_argument(
        "--weights",
        type=float,
        nargs="*",
        default=[0.05],
        help="adaptive attacks: naturalness weights (cosine per robust-z unit)",
    )
    p.add_argument(
        "--stored",
        type=Path,
        default=None,
        help="also judge the passages of a benchmarks/gaslite results.json (same concepts)",
    )
    p.add_argument("--no-fresh", action="store_true", help="only judge --stored passages")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    return p.parse_args()


def read_jsonl(path: Path) -> list[dict]:
    with path.open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


def doc_texts(docs: list[dict]) -> list[str]:
    return [(d.get("title", "") + " " + d.get("text", "")).strip() for d in docs]


def corpus_vectors(attacker: Attacker, texts: list[str], out: Path) -> np.ndarray:
    for cache in (
        out / "scifact_minilm_docs.npy",
        ROOT / "benchmarks/gaslite/out/scifact_minilm_docs.npy",
    ):
        if cache.exists() and len(vecs := np.load(cache)) == len(texts):
            return vecs
    order = np.argsort([len(t) for t in texts])
    started = time.monotonic()
    sorted_vecs = attacker.embed_texts([texts[i] for i in order], batch_size=32)
    vecs = np.empty_like(sorted_vecs)
    vecs[order] = sorted_vecs
    print(f"encoded {len(texts)} docs in {time.monotonic() - started:.0f}s", flush=True)
    np.save(out / "scifact_minilm_docs.npy", vecs)
    return vecs


def tokenizer_fn(attacker: Attacker):
    tok = attacker.tokenizer
    tok.model_max_length = 10**9

    def tokenize(texts):
        ids = tok(list(texts), add_special_tokens=False)["input_ids"]
        return [tok.convert_ids_to_tokens(row) for row in ids]

    return tokenize


def topk(query_vecs: np.ndarray, doc_vecs: np.ndarray, depth: int = DEPTH) -> np.ndarray:
    return -np.sort(-(query_vecs @ doc_vecs.T), axis=1)[:, :depth]


class Defence:
    """The text screen fitted once on SciFact, hubness calibrated per concept (the known
    queries exclude that concept's held-out ones)."""

    def __init__(self, texts, doc_vecs, tokenize, seed):
        self.texts, self.doc_vecs, self.tokenize = texts, doc_vecs, tokenize
        _, self.cal, self.test = split_fit_calibrate(
            len(texts), seed=seed, fit_share=0.5, test_share=0.25
        )
        started = time.monotonic()
        self.screen = screen_fit(texts, fpr=0.01, tokenize=tokenize, seed=seed, test_share=0.25)
        self.text_feats = {
            "cal": self.screen.language.features([texts[i] for i in self.cal], tokenize=tokenize),
            "test": self.screen.language.features([texts[i] for i in self.test], tokenize=tokenize),
        }
        print(f"screen fitted in {time.monotonic() - started:.0f}s", flush=True)

    def for_concept(self, known_vecs: np.ndarray):
        kth = topk(known_vecs, self.doc_vecs, HUB_K)[:, -1]
        hub = hubness(self.doc_vecs, query_vecs=known_vecs, kth_scores=kth, in_index=True)
        clean = {
            s: {**self.text_feats[s], HUBNESS: hub[idx]}
            for s, idx in (("cal", self.cal), ("test", self.test))
        }
        calibration = Calibration.fit(clean["cal"], fpr=0.01, report_fprs=(0.01, 0.05))
        return calibration, clean, kth

    def features(self, texts, vecs, known_vecs, kth):
        feats = self.screen.language.features(texts, tokenize=self.tokenize)
        feats[HUBNESS] = hubness(vecs, query_vecs=known_vecs, kth_scores=kth)
        return feats


def judge(name, texts, attacker, defence, concept) -> dict:
    calibration, clean, kth = concept["calibration"], concept["clean"], concept["kth"]
    vecs = attacker.embed_texts(texts)
    feats = defence.features(texts, vecs, concept["known"], kth)
    report = recall_report(clean=clean["cal"], attack=feats, calibration=calibration)
    combined = calibration.combined(feats)
    test_fpr = {}
    for rate in ("0.01", "0.05"):
        bar = threshold_at_fpr(calibration.combined(clean["cal"]), float(rate))
        test_fpr[rate] = float(np.mean(calibration.combined(clean["test"]) > bar))
    flagged = combined > calibration.threshold
    qv, real = concept["held_out_vecs"], concept["real"]
    before = evaluate_passages(passage_vecs=vecs, query_vecs=qv, topk_scores=real)["appeared@10"]
    kept = vecs[~flagged]
    after = (
        evaluate_passages(passage_vecs=kept, query_vecs=qv, topk_scores=real)["appeared@10"]
        if len(kept)
        else 0.0
    )
    return {
        "variant": name,
        "n": len(texts),
        "recall": {r: {f: v["recall"] for f, v in row.items()} for r, row in report.items()},
        "combined_test_fpr": test_fpr,
        "appeared@10": before,
        "appeared@10_screened": after,
        "flagged": int(flagged.sum()),
        "texts": texts,
    }


def prepare_concept(spec, queries, attacker, defence, doc_vecs, seed) -> dict:
    name, _, pattern = spec.partition("=")
    regex = re.compile(pattern or CONCEPTS[name], re.IGNORECASE)
    members = [q for q in queries if regex.search(q["text"])]
    held_in, held_out = split_held_in_out(members, held_in=0.5, seed=seed)
    out_texts = {q["text"] for q in held_out}
    known = [q["text"] for q in queries if q["text"] not in out_texts]
    known_vecs = attacker.embed_texts(known, kind="query")
    calibration, clean, kth = defence.for_concept(known_vecs)
    held_out_vecs = attacker.embed_texts([q["text"] for q in held_out], kind="query")
    return {
        "name": name,
        "n_held_in": len(held_in),
        "n_held_out": len(held_out),
        "held_in_vecs": attacker.embed_texts([q["text"] for q in held_in], kind="query"),
        "held_out_vecs": held_out_vecs,
        "real": topk(held_out_vecs, doc_vecs),
        "known": known_vecs,
        "calibration": calibration,
        "clean": clean,
        "kth": kth,
    }


def attack(attacker, concept, args, *, weight: float, defence) -> list[str]:
    budget = min(args.budget, concept["n_held_in"])
    targets = kmeans_targets(concept["held_in_vecs"], n=budget, seed=args.seed)
    kwargs = {}
    if weight:
        language = defence.screen.language
        kwargs = {
            "penalty": defence.screen.naturalness_penalty,
            "vocabulary": attacker.vocabulary_mask(lambda t: t.isalnum() and language.knows(t)),
        }
    texts = []
    for i, target in enumerate(targets):
        config = AttackConfig(
            trigger_len=args.trigger_len,
            time_limit_s=args.time_limit,
            seed=args.seed + i,
            naturalness_weight=weight,
        )
        res = attacker.attack(target=target, message=MESSAGE, config=config, **kwargs)
        print(
            f"  [{concept['name']} w={weight}] passage {i + 1}/{budget}: cos "
            f"{res.initial_cosine:.3f} -> {res.best_cosine:.3f}, {res.iterations_run} it",
            flush=True,
        )
        texts.append(res.text)
    return texts


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"Defence on SciFact ({meta['n_docs']} docs), {meta['model']}; {meta['settings']}",
        f"machine: {meta['machine']}; total {meta['seconds']:.0f}s",
        "",
        "| concept | attack | passages | recall@1% combined | hubness | char ppl | OOV | unseen"
        " bigrams | word-pieces | symbols | recall@5% combined | clean FPR (test) 1% / 5% |"
        " appeared@10 | appeared@10 screened |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        one, five = r["recall"]["0.01"], r["recall"]["0.05"]
        lines.append(
            f"| {r['concept']} | {r['variant']} | {r['n']} | **{one[COMBINED]:.0%}**"
            f" | {one[HUBNESS]:.0%} | {one['char_perplexity']:.0%} | {one['oov_share']:.0%}"
            f" | {one['unseen_bigram_share']:.0%} | {one['wordpiece_share']:.0%}"
            f" | {one['symbol_density']:.0%} | {five[COMBINED]:.0%}"
            f" | {r['combined_test_fpr']['0.01']:.1%} / {r['combined_test_fpr']['0.05']:.1%}"
            f" | {r['appeared@10']:.1%} | **{r['appeared@10_screened']:.1%}** |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    data = args.data / "scifact"
    attacker = Attacker.from_path(default_model_path(), device="cpu")
    texts = doc_texts(read_jsonl(data / "corpus.jsonl"))
    doc_vecs = corpus_vectors(attacker, texts, args.out)
    queries = read_jsonl(data / "queries.jsonl")
    defence = Defence(texts, doc_vecs, tokenizer_fn(attacker), args.seed)
    stored = {}
    if args.stored:
        stored = {
            c["name"]: [p["text"] for p in c["passages"]]
            for c in json.loads(args.stored.read_text())["concepts"]
        }
    rows = []
    for spec in args.concepts:
        concept = prepare_concept(spec, queries, attacker, defence, doc_vecs, args.seed)
        variants = {"message only": [MESSAGE]}
        if concept["name"] in stored:
            variants["GASLITE (stored run, 60 s/passage)"] = stored[concept["name"]]
        if not args.no_fresh:
            variants["GASLITE"] = attack(attacker, concept, args, weight=0.0, defence=defence)
            for w in args.weights:
                variants[f"adaptive w={w}"] = attack(
                    attacker, concept, args, weight=w, defence=defence
                )
        for name, passages in variants.items():
            row = judge(name, passages, attacker, defence, concept)
            rows.append({"concept": concept["name"], **row})
            print(
                f"[{concept['name']}] {name}: {json.dumps({k: row[k] for k in ('appeared@10', 'appeared@10_screened', 'flagged', 'n')})}",
                flush=True,
            )
    meta = {
        "model": "all-MiniLM-L6-v2",
        "n_docs": len(texts),
        "settings": f"budget {args.budget}, trigger {args.trigger_len}, {args.time_limit}s per "
        f"passage, adaptive weights {args.weights}, hubness top-{HUB_K} of "
        f"{len(queries)} queries minus held-out",
        "heldout_fpr_text_screen": defence.screen.heldout_fpr,
        "seconds": time.monotonic() - started,
        "machine": f"{platform.processor() or platform.machine()}, torch threads "
        f"{torch.get_num_threads()}, cpu",
    }
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    table = markdown(rows, meta)
    (args.out / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
