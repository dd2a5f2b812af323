"""Compensation adapter against QDC against reindexing, after a SciFact fine-tune.

v0 = all-MiniLM-L6-v2 indexes SciFact (the new task) and NFCorpus (an old task). v1 is
fine-tuned from v0 on SciFact's train judgements the way the finetune job does it (hard
negatives mined with v0 skipping its top 3, document distillation targets read from the v0
index, parent query embeddings once). Then, on each corpus's test queries, nDCG@10 of:
v0; v1 queries on the v0 index raw, with QDC (Δ from v1's training queries) and with the
learned adapter (fitted on v1's training queries plus a document sample of each v0 index,
as the job does); and v1 on a full reindex.

    .venv/bin/python benchmarks/adapter/run.py [--steps 58 --batch-size 16 ...]

Writes benchmarks/adapter/out/results.json and prints the table. Models, checkpoints and
cached v0 embeddings go to out/work/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.continual import run as continual  # noqa: E402
from workers.ml.adapter import CorpusPairs, RetrievalProbe, fit_adapter, fit_corpus_adapter  # noqa: E402
from workers.ml.drift import compensate, drift_vector_of  # noqa: E402
from workers.ml.spec import default_model_path  # noqa: E402
from workers.ml.training import (  # noqa: E402
    DistillTargets,
    FinetuneConfig,
    TrainPair,
    finetune,
    mine_hard_negatives,
)

OUT = Path(__file__).resolve().parent / "out"


def train_pairs(sci, train_qrels, *, v0_docs, v0, negatives: int, skip_top: int):
    row = {d: i for i, d in enumerate(sci.doc_ids)}
    judged = sorted((q, d) for q, docs in train_qrels.items() for d in docs if d in row)
    queries = sorted({q for q, _ in judged})
    q_vecs = v0.encode([sci.queries[q] for q in queries], kind="query")
    positives = [{row[d] for d in train_qrels[q] if d in row} for q in queries]
    mined = mine_hard_negatives(
        query_vecs=q_vecs, doc_vecs=v0_docs, positives=positives, k=negatives, skip_top=skip_top
    )
    negs = dict(zip(queries, mined, strict=True))
    pairs = [
        TrainPair(
            query=sci.queries[q],
            positive=sci.doc_texts[row[d]],
            negatives=[sci.doc_texts[i] for i in negs[q]],
        )
        for q, d in judged
    ]
    return pairs, dict(zip([sci.queries[q] for q in queries], q_vecs, strict=True))


def sample_rows(n_docs: int, n: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).permutation(n_docs)[: min(n, n_docs)])


def platform_probe(*, sci, train_qrels, train_queries, child_q, sample, pool_v0, docs_v0, seed):
    """As the finetune job does: a fifth (at most 200) of the training queries is kept out
    of the fit; their positives' v0 vectors join the sampled documents as the pool."""
    row = {d: i for i, d in enumerate(sci.doc_ids)}
    qid_of = {text: q for q, text in sci.queries.items()}
    n_probe = min(200, len(train_queries) // 5)
    chosen = sorted(np.random.default_rng(seed).permutation(len(train_queries))[:n_probe])
    pool_rows = {int(doc): k for k, doc in enumerate(sample)}
    pool = list(pool_v0)
    positives = []
    for i in chosen:
        rows = []
        for d in train_qrels[qid_of[train_queries[i]]]:
            if d in row:
                if row[d] not in pool_rows:
                    pool_rows[row[d]] = len(pool)
                    pool.append(docs_v0[row[d]])
                rows.append(pool_rows[row[d]])
        positives.append(rows)
    probe = RetrievalProbe(queries=child_q[chosen], positives=positives, pool=np.stack(pool))
    return np.setdiff1d(np.arange(len(train_queries)), chosen), probe


def corpus_adapter(*, name, data, c, v0, v1, args):
    """The finetune job's per-corpus adapter (workers.ml.adapter.fit_corpus_adapter) for
    one task: a ranking map on a sample of its documents (v0 vectors as the index holds
    them, v1's computed), a query map on its train queries, blended by nDCG@10 of a probe of
    a fifth of its judged train queries (none of the test queries are touched)."""
    train_qrels = continual._read_qrels(args.data / name / "qrels_train.tsv")
    row = {d: i for i, d in enumerate(data.doc_ids)}
    qids = sorted(
        q for q, docs in train_qrels.items() if q in data.queries and set(docs) & set(row)
    )
    texts = [data.queries[q] for q in qids]
    child_q, parent_q = v1.encode(texts, kind="query"), v0.encode(texts, kind="query")
    sample = sample_rows(len(data.doc_texts), args.corpus_adapter_docs, args.seed)
    keep, probe = platform_probe(
        sci=data,
        train_qrels={
            q: {d: r for d, r in docs.items() if r > 0} for q, docs in train_qrels.items()
        },
        train_queries=texts,
        child_q=child_q,
        sample=sample,
        pool_v0=c["docs_v0"][sample],
        docs_v0=c["docs_v0"],
        seed=args.seed,
    )
    pairs = CorpusPairs(
        child_docs=c["docs_v1"][sample],
        parent_docs=c["docs_v0"][sample],
        child_queries=child_q[keep],
        parent_queries=parent_q[keep],
    )
    t = time.perf_counter()
    adapter = fit_corpus_adapter(pairs, probe=probe, seed=args.seed)
    adapter.scores["fit_seconds"] = round(time.perf_counter() - t, 1)
    return adapter


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--old-task", default="nfcorpus")
    p.add_argument("--steps", type=int, default=58)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--negatives", type=int, default=1)
    p.add_argument("--skip-top", type=int, default=3)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--distill-weight", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=128, help="training and evaluation")
    p.add_argument("--adapter-docs", type=int, default=500, help="sampled per corpus")
    p.add_argument(
        "--corpus-adapter-docs", type=int, default=5000, help="sampled per corpus adapter"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results.json", help="file name under out/")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    continual.DATA, continual.WORK = args.data, OUT / "work"
    started = time.perf_counter()
    tasks = {
        "scifact": continual.load_beir("scifact", qrels_file="qrels_test.tsv"),
        args.old_task: continual.load_beir(args.old_task),
    }
    v0 = continual.encoder(default_model_path(), max_tokens=args.max_tokens)
    print("v0: encoding the corpora (cached after the first run)", flush=True)
    ctx = {}
    for name, data in tasks.items():
        qids = sorted(q for q in data.qrels if q in data.queries)
        ctx[name] = {
            "qids": qids,
            "qtexts": [data.queries[q] for q in qids],
            "docs_v0": continual.cached_docs(v0, data.doc_texts, tag=f"{name}-{args.max_tokens}"),
        }
        ctx[name]["q_v0"] = v0.encode(ctx[name]["qtexts"], kind="query")

    sci = tasks["scifact"]
    train_qrels = continual._read_qrels(args.data / "scifact" / "qrels_train.tsv")
    pairs, parent_q = train_pairs(
        sci,
        train_qrels,
        v0_docs=ctx["scifact"]["docs_v0"],
        v0=v0,
        negatives=args.negatives,
        skip_top=args.skip_top,
    )
    # What the job reads from the parent's index instead of running the parent.
    targets = DistillTargets(
        queries=parent_q,
        documents=dict(zip(sci.doc_texts, ctx["scifact"]["docs_v0"], strict=True)),
    )
    config = FinetuneConfig(
        lr=args.lr,
        max_steps=args.steps,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        negatives_per_query=args.negatives,
        negatives_skip_top=args.skip_top,
        distill_weight=args.distill_weight,
        seed=args.seed,
        checkpoint_every=10,
    )
    key = continual._settings_key(config, len(pairs))
    out_dir = OUT / "work" / "models" / f"v1-{key}"
    t = time.perf_counter()
    if not (out_dir / "model.safetensors").exists():
        print(f"training v1 on {len(pairs)} SciFact train pairs, {args.steps} steps", flush=True)
        finetune(
            parent_path=default_model_path(),
            pairs=pairs,
            out_dir=out_dir,
            config=config,
            checkpoint_dir=OUT / "work" / "checkpoints" / key,
            targets=targets,
            on_step=lambda i: print(
                f"  step {i.step} loss {i.loss:.3f} {i.seconds:.1f}s", flush=True
            ),
        )
    train_seconds = time.perf_counter() - t
    v1 = continual.encoder(out_dir, max_tokens=args.max_tokens)

    train_queries = list(parent_q)
    child_q = v1.encode(train_queries, kind="query")
    parent_qm = np.stack([parent_q[q] for q in train_queries])
    delta = drift_vector_of(child_vecs=child_q, parent_vecs=parent_qm)
    print("v1: encoding the corpora (the reindex)", flush=True)
    xd, yd, samples = [], [], {}
    for name, data in tasks.items():
        c = ctx[name]
        c["docs_v1"] = continual.cached_docs(v1, data.doc_texts, tag=f"{name}-v1-{key}")
        c["q_v1"] = v1.encode(c["qtexts"], kind="query")
        samples[name] = sample_rows(len(data.doc_texts), args.adapter_docs, args.seed)
        xd.append(c["docs_v1"][samples[name]])
        yd.append(c["docs_v0"][samples[name]])
    keep, probe = platform_probe(
        sci=sci,
        train_qrels=train_qrels,
        train_queries=train_queries,
        child_q=child_q,
        sample=samples["scifact"],
        pool_v0=ctx["scifact"]["docs_v0"][samples["scifact"]],
        docs_v0=ctx["scifact"]["docs_v0"],
        seed=args.seed,
    )
    n_docs = sum(len(x) for x in xd)
    adapters = {
        # The finetune job's choice: candidates fitted on all pairs or on the documents
        # alone, chosen by MRR@10 of the held-out judged queries.
        "adapter": fit_adapter(
            np.concatenate([child_q[keep], *xd]),
            np.concatenate([parent_qm[keep], *yd]),
            seed=args.seed,
            is_query=np.arange(len(keep) + n_docs) < len(keep),
            probe=probe,
        ),
        # Without the probe: every pair, chosen by held-out cosine to the parent's vectors.
        "adapter_cosine": fit_adapter(
            np.concatenate([child_q, *xd]), np.concatenate([parent_qm, *yd]), seed=args.seed
        ),
    }

    table, corpus_adapters = {}, {}
    for name, data in tasks.items():
        c = ctx[name]
        corpus_adapters[name] = corpus_adapter(name=name, data=data, c=c, v0=v0, v1=v1, args=args)

        def score(q, docs, c=c, data=data):
            return continual.ndcg10(q, c["qids"], docs, data)

        table[name] = {
            "v0": score(c["q_v0"], c["docs_v0"]),
            "raw": score(c["q_v1"], c["docs_v0"]),
            "qdc": score(compensate(c["q_v1"], [delta]), c["docs_v0"]),
            **{k: score(a.apply(c["q_v1"]), c["docs_v0"]) for k, a in adapters.items()},
            "adapter_corpus": score(corpus_adapters[name].apply(c["q_v1"]), c["docs_v0"]),
            "reindex": score(c["q_v1"], c["docs_v1"]),
        }
        row = table[name]
        loss = row["v0"] - row["raw"]
        gain = row["reindex"] - row["raw"]
        for method in ("qdc", *adapters, "adapter_corpus"):
            won = row[method] - row["raw"]
            row[f"{method}_recovers_drift_loss"] = won / loss if loss > 0 else None
            row[f"{method}_recovers_reindex_gain"] = won / gain if gain > 0 else None
        print(name, json.dumps(row), flush=True)
    report = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": continual.machine(),
        "pairs": len(pairs),
        "train_queries": len(train_queries),
        "train_seconds": train_seconds,
        "delta_norm": float(np.linalg.norm(delta)),
        "adapters": {
            k: {"method": a.method, "ridge_lambda": a.ridge_lambda, **a.scores}
            for k, a in adapters.items()
        },
        "corpus_adapters": {k: a.scores for k, a in corpus_adapters.items()},
        "ndcg@10": table,
        "total_seconds": time.perf_counter() - started,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "adapters"}, indent=1))
    for k, a in adapters.items():
        print(k, a.scores["chosen"], a.scores["held_out_cosine"], a.scores.get("probe_mrr@10"))
    return report


if __name__ == "__main__":
    main()
