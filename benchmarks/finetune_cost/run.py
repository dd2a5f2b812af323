"""Fine-tune step time, today's way against issue 11's, side by side on the same SciFact pairs.

    .venv/bin/python benchmarks/finetune_cost/run.py [--steps 8 --batch-size 16 --negatives 3]

"old": a frozen parent copy embeds every batch's queries and documents on every step (the code
before issue 11, kept as FinetuneConfig.parent_forward_each_step). "new": the documents'
distillation targets are the vectors the parent's index already holds (here: computed once
beforehand, standing in for the index, and not timed), the parent embeds the training
queries once before the first step (timed, reported separately), and no parent runs during
the steps. The two runs advance in turn, one step each on the same batch (same seed, same
plan), so a shared machine's load falls on both alike; the losses are compared too.

Pairs: SciFact train judgements, one hard negative set each mined with the parent among the
judged documents (skipping the parent's top 3 non-positives, as the finetune job does).
Writes out/results.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.continual import run as continual  # noqa: E402
from workers.ml import training  # noqa: E402
from workers.ml.spec import default_model_path  # noqa: E402
from workers.ml.training import (  # noqa: E402
    DistillTargets,
    FinetuneConfig,
    TrainPair,
    distill_targets_complete,
    mine_hard_negatives,
    plan_batches,
)

OUT = Path(__file__).resolve().parent / "out"


def scifact_pairs(data: Path, *, n: int, negatives: int, max_tokens: int, seed: int):
    """(pairs, {document text: parent vector}) for n SciFact train judgements."""
    continual.DATA = data
    sci = continual.load_beir("scifact", qrels_file="qrels_train.tsv")
    row = {d: i for i, d in enumerate(sci.doc_ids)}
    judged = sorted((q, d) for q, docs in sci.qrels.items() for d in docs if d in row)
    judged = [judged[i] for i in np.random.default_rng(seed).permutation(len(judged))[:n]]
    pool = sorted({row[d] for docs in sci.qrels.values() for d in docs if d in row})
    enc = continual.encoder(default_model_path(), max_tokens=max_tokens)
    pool_vecs = enc.encode([sci.doc_texts[i] for i in pool], kind="document")
    at = {doc_row: k for k, doc_row in enumerate(pool)}
    q_vecs = enc.encode([sci.queries[q] for q, _ in judged], kind="query")
    mined = mine_hard_negatives(
        query_vecs=q_vecs,
        doc_vecs=pool_vecs,
        positives=[{at[row[d]] for d in sci.qrels[q] if d in row} for q, _ in judged],
        k=negatives,
        skip_top=3,
    )
    pairs = [
        TrainPair(
            query=sci.queries[q],
            positive=sci.doc_texts[row[d]],
            negatives=[sci.doc_texts[pool[k]] for k in neg],
        )
        for (q, d), neg in zip(judged, mined, strict=True)
    ]
    index = {sci.doc_texts[i]: pool_vecs[k] for k, i in enumerate(pool)}
    return pairs, index


def interleaved(*, pairs, base: dict, index: dict, steps: int) -> dict:
    """Old and new runs side by side, one step of each in turn on the same batch, so that
    the load of a shared machine falls on both alike; medians over the steps."""
    parent = str(default_model_path())
    old_config = FinetuneConfig(**base, parent_forward_each_step=True)
    new_config = FinetuneConfig(**base)
    plan = plan_batches(
        n_pairs=len(pairs), batch_size=base["batch_size"], total_steps=steps, seed=base["seed"]
    )
    # The trainer's own internals: the public finetune() runs one mode at a time.
    old = training._start(parent_path=parent, config=old_config, total=steps, resume=None)
    new = training._start(parent_path=parent, config=new_config, total=steps, resume=None)
    t = time.perf_counter()
    # What the finetune job does: the index's document vectors, the parent's queries once.
    new.targets = distill_targets_complete(
        parent_path=parent, pairs=pairs, config=new_config, given=DistillTargets(documents=index)
    )
    query_pass = time.perf_counter() - t
    known = training.known_positives(pairs)  # what finetune() masks with
    times = {"old": [], "new": []}
    losses = {"old": [], "new": []}
    for step in range(steps):
        batch = [pairs[i] for i in plan[step]]
        for name, run, config in (("old", old, old_config), ("new", new, new_config)):
            # Same dropout masks for both: the losses then differ only by the targets.
            torch.manual_seed(base["seed"] * 100_003 + step)
            info = training._train_step(run, batch, config, steps, known)
            times[name].append(info.seconds)
            losses[name].append(info.loss)
    return {"times": times, "losses": losses, "query_pass_seconds": query_pass}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--negatives", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pairs, index = scifact_pairs(
        args.data,
        n=args.steps * args.batch_size,
        negatives=args.negatives,
        max_tokens=args.max_tokens,
        seed=args.seed,
    )
    base = dict(
        max_steps=args.steps,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        negatives_per_query=args.negatives,
        seed=args.seed,
        checkpoint_every=0,
        warmup_steps=0,
    )
    got = interleaved(pairs=pairs, base=base, index=index, steps=args.steps)
    # The first step of each warms up allocators and kernels: left out of the medians.
    old_s, new_s = (float(np.median(got["times"][k][1:])) for k in ("old", "new"))
    report = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": continual.machine() + f", {platform.platform()}",
        "pairs": len(pairs),
        "step_seconds": got["times"],
        "median_step_seconds": {"old": old_s, "new": new_s},
        "step_speedup": old_s / new_s,
        "new_parent_query_pass_seconds": got["query_pass_seconds"],
        "max_loss_difference": float(
            np.max(np.abs(np.array(got["losses"]["old"]) - np.array(got["losses"]["new"])))
        ),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(report, indent=2))
    print(
        f"median old {old_s:.2f} s/step, new {new_s:.2f} s/step: x{report['step_speedup']:.2f}; "
        f"new's one-off query pass {got['query_pass_seconds']:.1f} s; "
        f"max |Δloss| {report['max_loss_difference']:.2e}"
    )
    return report


if __name__ == "__main__":
    main()
