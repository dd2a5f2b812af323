"""Continual-learning benchmark: does Query Drift Compensation keep an old index usable?

v0 = all-MiniLM-L6-v2 indexes SciFact. v1 is fine-tuned from v0 on NFCorpus train pairs (with
and without distillation). We then ask SciFact test queries through v1 against the v0 index,
raw and drift-compensated (Δ from v1's own training queries), against a full v1 reindex, and
check that v1 did learn the new task (NFCorpus test).

    .venv/bin/python benchmarks/continual/run.py [--steps N --batch-size B ...]

Writes benchmarks/continual/out/results.json and results.md and prints the table. Models,
checkpoints and the cached v0 embeddings go to out/work/ (git-ignored); training resumes from
its checkpoints if a run is interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from workers.ml.drift import compensate, drift_vector  # noqa: E402
from workers.ml.encoder import Encoder  # noqa: E402
from workers.ml.metrics import evaluate_run  # noqa: E402
from workers.ml.search import topk_cosine  # noqa: E402
from workers.ml.spec import default_model_path, read_model_spec  # noqa: E402
from workers.ml.training import (  # noqa: E402
    FinetuneConfig,
    TrainPair,
    finetune,
    mine_hard_negatives,
)

DATA = ROOT.parent / "shared" / "data"  # ../shared/data beside the repo; --data overrides
OUT = Path(__file__).resolve().parent / "out"
WORK = OUT / "work"


# --------------------------------------------------------------------------- data


@dataclasses.dataclass
class Beir:
    doc_ids: list[str]
    doc_texts: list[str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    for line in path.read_text().splitlines()[1:]:
        qid, did, score = line.split("\t")
        qrels[qid][did] = int(score)
    return dict(qrels)


def load_beir(name: str, *, qrels_file: str = "qrels.tsv") -> Beir:
    folder = DATA / name
    docs = [json.loads(line) for line in (folder / "corpus.jsonl").open()]
    queries = {q["_id"]: q["text"] for q in map(json.loads, (folder / "queries.jsonl").open())}
    return Beir(
        doc_ids=[d["_id"] for d in docs],
        # BEIR convention (and the reference 0.645 for SciFact): title + " " + text.
        doc_texts=[(d.get("title", "") + " " + d["text"]).strip() for d in docs],
        queries=queries,
        qrels=_read_qrels(folder / qrels_file),
    )


# --------------------------------------------------------------------------- encoding


def encoder(path: Path | str, *, max_tokens: int) -> Encoder:
    return Encoder(dataclasses.replace(read_model_spec(path), max_tokens=max_tokens))


def cached_docs(enc: Encoder, texts: list[str], *, tag: str) -> np.ndarray:
    """v0 document embeddings never change between runs; cache them keyed by model + input."""
    key = hashlib.sha256(
        json.dumps([enc.spec.as_dict(), len(texts), texts[0], texts[-1]]).encode()
    ).hexdigest()[:16]
    path = WORK / "cache" / f"{tag}-{key}.npy"
    if path.exists():
        return np.load(path)
    vecs = enc.encode(texts, kind="document")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vecs)
    return vecs


def ndcg10(query_vecs: np.ndarray, qids: list[str], doc_vecs: np.ndarray, data: Beir) -> float:
    idx, scores = topk_cosine(query_vecs, doc_vecs, k=100)
    run = {
        qid: {data.doc_ids[i]: float(s) for i, s in zip(row_i, row_s, strict=True) if i >= 0}
        for qid, row_i, row_s in zip(qids, idx, scores, strict=True)
    }
    return evaluate_run(qrels=data.qrels, run=run).aggregate["ndcg@10"]


def mean_cos(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.mean(np.sum(a * b, axis=1)))


# --------------------------------------------------------------------------- training data


def training_pairs(
    nf: Beir,
    train_qrels: dict[str, dict[str, int]],
    *,
    n: int,
    negatives: int,
    seed: int,
    v0: Encoder,
    nf_docs_v0: np.ndarray,
) -> list[TrainPair]:
    """One (query, positive, hard negatives) per sampled NFCorpus train query.

    Negatives are mined with v0 after skipping its top 5 non-positives: NFCorpus labels are
    incomplete and the very top unlabelled documents are often relevant.
    """
    row = {d: i for i, d in enumerate(nf.doc_ids)}
    qids = sorted(
        q for q, docs in train_qrels.items() if q in nf.queries and any(d in row for d in docs)
    )
    rng = np.random.default_rng(seed)
    chosen = [qids[i] for i in rng.permutation(len(qids))[: min(n, len(qids))]]
    positives = [{row[d] for d in train_qrels[q] if d in row} for q in chosen]
    q_vecs = v0.encode([nf.queries[q] for q in chosen], kind="query")
    negs = mine_hard_negatives(
        query_vecs=q_vecs, doc_vecs=nf_docs_v0, positives=positives, k=negatives, skip_top=5
    )
    return [
        TrainPair(
            query=nf.queries[q],
            positive=nf.doc_texts[int(rng.choice(sorted(pos)))],
            negatives=[nf.doc_texts[i] for i in neg],
        )
        for q, pos, neg in zip(chosen, positives, negs, strict=True)
    ]


# --------------------------------------------------------------------------- one variant


def evaluate_variant(
    *, name: str, model_dir: Path, args, v0: Encoder, sci: Beir, nf: Beir, ctx: dict
) -> dict:
    v1 = encoder(model_dir, max_tokens=args.eval_max_tokens)
    t = time.perf_counter()
    delta = drift_vector(child=v1, parent=v0, queries=ctx["train_queries"])
    sci_q1 = v1.encode(ctx["sci_qtexts"], kind="query")
    nf_q1 = v1.encode(ctx["nf_qtexts"], kind="query")
    sci_qc = compensate(sci_q1, [delta])
    rng = np.random.default_rng(args.seed)
    rand = rng.normal(size=delta.shape).astype(np.float32)
    rand *= np.linalg.norm(delta) / np.linalg.norm(rand)
    res = {
        "variant": name,
        "delta_norm": float(np.linalg.norm(delta)),
        "scifact_v1_raw_on_v0_index": ndcg10(sci_q1, ctx["sci_qids"], ctx["sci_docs_v0"], sci),
        "scifact_v1_qdc_on_v0_index": ndcg10(sci_qc, ctx["sci_qids"], ctx["sci_docs_v0"], sci),
        "scifact_v1_random_shift_on_v0_index": ndcg10(
            compensate(sci_q1, [rand]), ctx["sci_qids"], ctx["sci_docs_v0"], sci
        ),
    }
    for tag, q1, q0 in (("scifact", sci_q1, ctx["sci_q0"]), ("nfcorpus", nf_q1, ctx["nf_q0"])):
        res[f"{tag}_cos_v1_v0"] = mean_cos(q1, q0)
        res[f"{tag}_cos_v1_minus_delta_v0"] = mean_cos(q1 - delta, q0)
        res[f"{tag}_cos_v1_minus_random_v0"] = mean_cos(q1 - rand, q0)
    if name in args.reindex.split(","):
        sci_docs_v1 = v1.encode(sci.doc_texts, kind="document")
        res["scifact_v1_reindex"] = ndcg10(sci_q1, ctx["sci_qids"], sci_docs_v1, sci)
        nf_docs_v1 = v1.encode(nf.doc_texts, kind="document")
        res["nfcorpus_v1"] = ndcg10(nf_q1, ctx["nf_qids"], nf_docs_v1, nf)
    res["eval_seconds"] = time.perf_counter() - t
    return res


def _settings_key(config, n_pairs: int) -> str:
    raw = json.dumps([dataclasses.asdict(config), n_pairs], sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:10]


def train_variant(*, name: str, distill: float, pairs: list[TrainPair], args) -> tuple[Path, dict]:
    out = WORK / "models" / f"v1-{name}"
    config = FinetuneConfig(
        lr=args.lr,
        warmup_steps=max(1, args.steps // 10),
        max_steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        max_tokens=args.train_max_tokens,
        distill_weight=distill,
        checkpoint_every=10,
        negatives_per_query=args.negatives,
    )
    t = time.perf_counter()

    def progress(info) -> None:
        if info.step % 10 == 0 or info.step == info.total_steps:
            print(
                f"  [{name}] step {info.step}/{info.total_steps} loss {info.loss:.3f} "
                f"(infonce {info.infonce:.3f}, distill {info.distill:.4f}) {info.seconds:.1f}s",
                flush=True,
            )

    result = finetune(
        parent_path=default_model_path(),
        pairs=pairs,
        out_dir=out,
        config=config,
        # Keyed by the settings: an interrupted run resumes, a run with new settings starts fresh.
        checkpoint_dir=WORK / "checkpoints" / f"v1-{name}-{_settings_key(config, len(pairs))}",
        on_step=progress,
    )
    curve = result.loss_curve
    return out, {
        "train_seconds": time.perf_counter() - t,
        "first_loss": curve[0]["loss"],
        "last10_loss": float(np.mean([r["loss"] for r in curve[-10:]])),
        "first_infonce": curve[0]["infonce"],
        "last10_infonce": float(np.mean([r["infonce"] for r in curve[-10:]])),
        "config": dataclasses.asdict(config),
    }


# --------------------------------------------------------------------------- report


def markdown(report: dict) -> str:
    base = report["v0"]
    variants = report["variants"]
    head = "| measure | v0 | " + " | ".join(f"v1 {v['variant']}" for v in variants) + " |"
    lines = [head, "|---" * (2 + len(variants)) + "|"]

    def row(label: str, v0_value: str, key: str, fmt: str = "{:.4f}") -> None:
        cells = [fmt.format(v[key]) if key in v else "not run" for v in variants]
        lines.append(f"| {label} | {v0_value} | " + " | ".join(cells) + " |")

    row(
        "SciFact nDCG@10, v1 raw queries on v0 index",
        f"{base['scifact']:.4f}",
        "scifact_v1_raw_on_v0_index",
    )
    row("SciFact nDCG@10, v1 + QDC on v0 index", "", "scifact_v1_qdc_on_v0_index")
    row(
        "SciFact nDCG@10, v1 − random shift (|Δ|) on v0 index",
        "",
        "scifact_v1_random_shift_on_v0_index",
    )
    row("SciFact nDCG@10, v1 full reindex", "", "scifact_v1_reindex")
    row("NFCorpus nDCG@10 (new task)", f"{base['nfcorpus']:.4f}", "nfcorpus_v1")
    row("‖Δ‖", "", "delta_norm")
    for tag in ("scifact", "nfcorpus"):
        row(f"{tag} test queries: mean cos(f_v1(q), f_v0(q))", "", f"{tag}_cos_v1_v0")
        row(
            f"{tag} test queries: mean cos(f_v1(q) − Δ, f_v0(q))",
            "",
            f"{tag}_cos_v1_minus_delta_v0",
        )
        row(
            f"{tag} test queries: mean cos(f_v1(q) − r, f_v0(q)), ‖r‖=‖Δ‖",
            "",
            f"{tag}_cos_v1_minus_random_v0",
        )
    row("train seconds", "", "train_seconds", "{:.0f}")
    row("first-step loss → mean of last 10", "", "loss_text", "{}")
    return "\n".join(lines)


def machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, "
        f"{'cuda ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only'}"
    )


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--negatives", type=int, default=1, help="hard negatives per query")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--train-max-tokens", type=int, default=128)
    p.add_argument("--eval-max-tokens", type=int, default=128)
    p.add_argument("--variants", default="distill,no-distill")
    p.add_argument(
        "--reindex",
        default="distill,no-distill",
        help="variants that also get a full v1 reindex of SciFact and NFCorpus ('' for none): "
        "each costs two corpus encodings, the slowest part of a CPU run",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path, default=DATA, help="folder holding scifact/ and nfcorpus/")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    global DATA  # the loaders below read the chosen folder
    args = parse_args(argv)
    DATA = args.data
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    sci = load_beir("scifact")
    nf = load_beir("nfcorpus")
    v0 = encoder(default_model_path(), max_tokens=args.eval_max_tokens)

    print("v0: encoding SciFact and NFCorpus corpora (cached after the first run)", flush=True)
    ctx: dict = {"sci_qids": sorted(q for q in sci.qrels if q in sci.queries)}
    ctx["nf_qids"] = sorted(q for q in nf.qrels if q in nf.queries)
    ctx["sci_qtexts"] = [sci.queries[q] for q in ctx["sci_qids"]]
    ctx["nf_qtexts"] = [nf.queries[q] for q in ctx["nf_qids"]]
    ctx["sci_docs_v0"] = cached_docs(v0, sci.doc_texts, tag="scifact")
    nf_docs_v0 = cached_docs(v0, nf.doc_texts, tag="nfcorpus")
    ctx["sci_q0"] = v0.encode(ctx["sci_qtexts"], kind="query")
    ctx["nf_q0"] = v0.encode(ctx["nf_qtexts"], kind="query")
    base = {
        "scifact": ndcg10(ctx["sci_q0"], ctx["sci_qids"], ctx["sci_docs_v0"], sci),
        "nfcorpus": ndcg10(ctx["nf_q0"], ctx["nf_qids"], nf_docs_v0, nf),
    }
    print(f"v0 nDCG@10 SciFact {base['scifact']:.4f}, NFCorpus {base['nfcorpus']:.4f}", flush=True)

    pairs = training_pairs(
        nf,
        _read_qrels(DATA / "nfcorpus" / "qrels_train.tsv"),
        n=args.steps * args.batch_size,
        negatives=args.negatives,
        seed=args.seed,
        v0=v0,
        nf_docs_v0=nf_docs_v0,
    )
    ctx["train_queries"] = sorted({p.query for p in pairs})
    variants = []
    for name in args.variants.split(","):
        print(f"training v1 ({name}) on {len(pairs)} NFCorpus pairs", flush=True)
        model_dir, train = train_variant(
            name=name, distill=0.0 if name == "no-distill" else 1.0, pairs=pairs, args=args
        )
        res = evaluate_variant(
            name=name, model_dir=model_dir, args=args, v0=v0, sci=sci, nf=nf, ctx=ctx
        )
        res |= train
        res["loss_text"] = f"{train['first_loss']:.3f} → {train['last10_loss']:.3f}"
        variants.append(res)
        print(json.dumps({k: v for k, v in res.items() if k != "config"}, indent=1), flush=True)

    report = {
        "args": vars(args),
        "machine": machine(),
        "n_train_pairs": len(pairs),
        "n_drift_queries": len(ctx["train_queries"]),
        "n_test_queries": {"scifact": len(ctx["sci_qids"]), "nfcorpus": len(ctx["nf_qids"])},
        "v0": base,
        "variants": variants,
        "total_seconds": time.perf_counter() - started,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (OUT / "results.md").write_text(
        f"# Continual learning: QDC on SciFact after fine-tuning on NFCorpus\n\n{table}\n\n"
        f"Machine: {report['machine']}. Total {report['total_seconds']:.0f} s.\n"
        f"Settings: {json.dumps(vars(args))}\n"
    )
    print(table)
    print(f"total {report['total_seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main()
