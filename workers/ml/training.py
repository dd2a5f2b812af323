"""Continual fine-tuning of an embedding model from its parent version (pure compute, no Django).

Loss follows Query Drift Compensation (Goswami et al. 2025, see METHODS.md): InfoNCE from each
query to the batch's documents (its positive, its hard negatives and everyone else's, as in-batch
negatives) at a fixed logit scale, plus embedding distillation against a frozen copy of the parent
so that the child stays close enough for an old index to remain usable.

The distillation targets (the parent's embeddings) are computed once, not every step: the
caller may hand in the ones it already has (the document vectors of the parent's index), the
rest are encoded by the parent in one pass before the first step, and the parent model is
then freed. `parent_forward_each_step` restores the old per-step forward pass (benchmarks).

The run is a resumable unit of work: every `checkpoint_every` steps the model, optimizer,
scheduler, RNG states and loss curve go to `checkpoint_dir`, and a later call with the same
arguments continues from there, so a killed or cancelled worker loses at most a few steps.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from workers.ml.pooling import embed_hidden
from workers.ml.spec import ModelSpec, read_model_spec

CHECKPOINT_FILE = "checkpoint.pt"
# Files that make a directory loadable by sentence-transformers; module folders such as
# 1_Pooling/ are found through modules.json.
_ST_FILES = (
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
)


@dataclass
class FinetuneConfig:
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    warmup_steps: int | None = None  # overrides warmup_ratio when set
    epochs: int = 1
    # When set, the exact number of optimizer steps (the data is cycled through more epochs if
    # needed); otherwise epochs * ceil(len(pairs) / batch_size).
    max_steps: int | None = None
    batch_size: int = 16
    seed: int = 0
    max_tokens: int = 256
    # Logit scale 20. QDC uses 0.02 (scale 50): on NFCorpus's many weak judgements that cost
    # 13 points on reindex against 2.9 here, and on SciFact 0.05 gives up 0.4 of 4.6 points
    # (benchmarks/forgetting/ablate.py, RESULTS.md).
    temperature: float = 0.05
    distill_weight: float = 1.0  # 0 disables distillation and skips loading the parent copy
    grad_clip: float = 1.0
    checkpoint_every: int = 50
    negatives_per_query: int = 3  # METHODS uses 7; 3 keeps a CPU step affordable
    # Hard-negative mining (by the caller) skips this many of the parent's top non-positive
    # documents: on sparse qrels they are often unjudged positives.
    negatives_skip_top: int = 3
    # Today's cost model before issue 11: a frozen parent copy runs on every batch.
    parent_forward_each_step: bool = False


@dataclass
class TrainPair:
    query: str
    positive: str
    negatives: list[str] = field(default_factory=list)


@dataclass
class DistillTargets:
    """The parent's unit embeddings by raw text (no prefix), for queries and documents."""

    queries: dict[str, np.ndarray] = field(default_factory=dict)
    documents: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class StepInfo:
    step: int  # 1-based number of the step just finished
    total_steps: int
    loss: float
    infonce: float
    distill: float
    lr: float
    seconds: float  # wall time of this step


@dataclass
class FinetuneResult:
    out_dir: str  # holds the model only when stopped is False
    steps: int
    loss_curve: list[dict]
    stopped: bool


# --------------------------------------------------------------------------- hard negatives


def mine_hard_negatives(
    *,
    query_vecs: np.ndarray,
    doc_vecs: np.ndarray,
    positives: list[set[int]],
    k: int,
    skip_top: int = 0,
    block: int = 1024,
) -> list[list[int]]:
    """The k most similar non-positive documents per query, best first.

    `skip_top` drops the first few non-positives: on real qrels the very top "negatives" are
    often unlabelled positives, and training against them teaches the wrong thing.
    Vectors are assumed unit-normalised, so a dot product is the cosine.
    """
    if len(positives) != len(query_vecs):
        raise ValueError("positives must have one set per query")
    want = min(k + skip_top, doc_vecs.shape[0])
    result: list[list[int]] = []
    for start in range(0, len(query_vecs), block):
        scores = np.asarray(query_vecs[start : start + block] @ doc_vecs.T, dtype=np.float32)
        for row, pos in zip(scores, positives[start : start + block], strict=True):
            result.append(_top_non_positive(row, pos, want=want, k=k, skip_top=skip_top))
    return result


def _top_non_positive(
    row: np.ndarray, pos: set[int], *, want: int, k: int, skip_top: int
) -> list[int]:
    row = row.copy()
    if pos:
        row[list(pos)] = -np.inf
    take = min(want + len(pos), row.shape[0])
    top = np.argpartition(-row, take - 1)[:take] if take < row.shape[0] else np.arange(len(row))
    ranked = [int(i) for i in top[np.argsort(-row[top], kind="stable")] if int(i) not in pos]
    return ranked[skip_top : skip_top + k]


# --------------------------------------------------------------------------- data plan


def plan_batches(*, n_pairs: int, batch_size: int, total_steps: int, seed: int) -> list[list[int]]:
    """Pair indices for every step, fixed by the seed alone.

    Computed up front instead of drawn from a live RNG so that a resumed run sees exactly the
    batches an uninterrupted run would have seen, without replaying the sampler.
    """
    if n_pairs == 0:
        raise ValueError("no training pairs")
    per_epoch = math.ceil(n_pairs / batch_size)
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < total_steps:
        order = np.random.default_rng([seed, epoch]).permutation(n_pairs)
        for b in range(per_epoch):
            batches.append([int(i) for i in order[b * batch_size : (b + 1) * batch_size]])
        epoch += 1
    return batches[:total_steps]


def pairs_drawn(pairs: Sequence[TrainPair], *, config: FinetuneConfig) -> list[TrainPair]:
    """The pairs a run of `max_steps` can reach when that is fewer than all, drawn by the
    seed and kept in their order: mining and distillation targets then cover only what
    trains (NFCorpus's train set is 110k judgements; 58 steps of 16 use 928)."""
    n = None if config.max_steps is None else config.max_steps * config.batch_size
    if n is None or n >= len(pairs):
        return list(pairs)
    rows = np.random.default_rng([config.seed, len(pairs)]).choice(len(pairs), n, replace=False)
    return [pairs[i] for i in sorted(rows)]


def _total_steps(config: FinetuneConfig, n_pairs: int) -> int:
    if config.max_steps is not None:
        return int(config.max_steps)
    return config.epochs * math.ceil(n_pairs / config.batch_size)


def _warmup_steps(config: FinetuneConfig, total: int) -> int:
    if config.warmup_steps is not None:
        return int(config.warmup_steps)
    return int(round(config.warmup_ratio * total))


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


# --------------------------------------------------------------------------- batch assembly


@dataclass
class _Batch:
    queries: list[str]
    documents: list[str]  # deduplicated: positives, hard negatives, all shared in-batch
    targets: list[int]  # index of each query's positive in documents
    mask: torch.Tensor  # (q, d) True where a document must not count as a negative
    query_keys: list[str] = field(default_factory=list)  # the texts without prefixes
    document_keys: list[str] = field(default_factory=list)


def assemble_batch(
    pairs: Sequence[TrainPair],
    *,
    negatives_per_query: int,
    spec: ModelSpec,
    known: Mapping[str, Collection[str]] | None = None,
) -> _Batch:
    """The batch's texts and its mask. `known` maps a query to the documents the training
    data judges relevant to it beyond the batch's own pairs; each one in the batch (another
    pair's positive or hard negative) is masked out of that query's negatives, as are the
    positives of the query's other pairs in the batch."""
    doc_index: dict[str, int] = {}

    def index_of(text: str) -> int:
        return doc_index.setdefault(text, len(doc_index))

    targets = [index_of(p.positive) for p in pairs]
    for p in pairs:
        for neg in p.negatives[:negatives_per_query]:
            index_of(neg)
    known = known or {}
    known = known_positives(pairs, also={p.query: known.get(p.query, ()) for p in pairs})
    mask = torch.zeros(len(pairs), len(doc_index), dtype=torch.bool)
    # On corpora whose queries share relevant documents (NFCorpus: 8 % of in-batch
    # negatives) a judged positive of one query is often in the batch as another's.
    for i, p in enumerate(pairs):
        for text in known[p.query]:
            j = doc_index.get(text)
            if j is not None and j != targets[i]:
                mask[i, j] = True
    documents = [spec.document_prefix + d for d in doc_index]
    return _Batch(
        queries=[spec.query_prefix + p.query for p in pairs],
        documents=documents,
        targets=targets,
        mask=mask,
        query_keys=[p.query for p in pairs],
        document_keys=list(doc_index),
    )


def known_positives(
    pairs: Sequence[TrainPair], *, also: Mapping[str, Collection[str]] | None = None
) -> dict[str, set[str]]:
    """Every positive document text of each query among `pairs`, and those in `also`."""
    known: dict[str, set[str]] = {q: set(texts) for q, texts in (also or {}).items()}
    for p in pairs:
        known.setdefault(p.query, set()).add(p.positive)
    return known


# --------------------------------------------------------------------------- model plumbing


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _uses_bf16(device: torch.device) -> bool:
    """bf16 autocast on a CUDA GPU (about twice the step rate there); never on the CPU,
    where bf16 matmuls are slower than fp32 and the numbers must stay as they were."""
    return device.type == "cuda"


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=_uses_bf16(device))


def _load(path: str | Path, device: torch.device) -> torch.nn.Module:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(path))
    return model.to(device)


def _embed(
    model: torch.nn.Module, tokenizer, texts: list[str], *, spec: ModelSpec, max_tokens: int
) -> torch.Tensor:
    device = next(model.parameters()).device
    enc = tokenizer(
        texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt"
    ).to(device)
    with _autocast(device):
        hidden = model(**enc).last_hidden_state
    # Cosine geometry for the loss regardless of the spec's normalize flag.
    return embed_hidden(hidden, enc["attention_mask"], mode=spec.pooling, normalize=True)


def _optimizer(model: torch.nn.Module, config: FinetuneConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for param in model.parameters():
        # Standard practice: weight decay on biases and LayerNorm gains only shrinks them.
        (no_decay if param.ndim < 2 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr)


# --------------------------------------------------------------------------- loss


def _step_loss(
    *,
    model: torch.nn.Module,
    parent: torch.nn.Module | None,
    tokenizer,
    batch: _Batch,
    spec: ModelSpec,
    config: FinetuneConfig,
    cached: DistillTargets | None = None,
) -> tuple[torch.Tensor, float, float]:
    q = _embed(model, tokenizer, batch.queries, spec=spec, max_tokens=config.max_tokens)
    d = _embed(model, tokenizer, batch.documents, spec=spec, max_tokens=config.max_tokens)
    logits = (q @ d.T) / config.temperature
    logits = logits.masked_fill(batch.mask.to(logits.device), float("-inf"))
    targets = torch.tensor(batch.targets, device=logits.device)
    infonce = F.cross_entropy(logits, targets)
    distill = torch.zeros((), device=logits.device)
    old = _parent_embeddings(
        parent=parent, targets=cached, tokenizer=tokenizer, batch=batch, spec=spec, config=config
    )
    if old is not None:
        q_old, d_old = old
        distill = (1 - F.cosine_similarity(q, q_old.to(q.dtype), dim=-1)).mean() + (
            1 - F.cosine_similarity(d, d_old.to(d.dtype), dim=-1)
        ).mean()
    loss = infonce + config.distill_weight * distill
    return loss, float(infonce.detach()), float(distill.detach())


def _parent_embeddings(
    *,
    parent: torch.nn.Module | None,
    targets: DistillTargets | None,
    tokenizer,
    batch: _Batch,
    spec: ModelSpec,
    config: FinetuneConfig,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The batch's distillation targets: looked up when precomputed, else a parent pass."""
    if config.distill_weight <= 0:
        return None
    device = _device()
    if targets is not None:
        q_old = np.stack([targets.queries[t] for t in batch.query_keys])
        d_old = np.stack([targets.documents[t] for t in batch.document_keys])
        return torch.from_numpy(q_old).to(device), torch.from_numpy(d_old).to(device)
    if parent is None:
        return None
    with torch.no_grad():
        q_old = _embed(parent, tokenizer, batch.queries, spec=spec, max_tokens=config.max_tokens)
        d_old = _embed(parent, tokenizer, batch.documents, spec=spec, max_tokens=config.max_tokens)
    return q_old, d_old


def distill_targets_complete(
    *,
    parent_path: str | Path,
    pairs: Sequence[TrainPair],
    config: FinetuneConfig,
    given: DistillTargets | None = None,
    batch_size: int = 64,
) -> DistillTargets:
    """Every query and document text of `pairs` with its parent embedding: those in `given`
    (e.g. read from the parent's index) as they are, the rest encoded by the parent once,
    as the training step embeds them (same prefixes, token limit and pooling)."""
    from transformers import AutoTokenizer

    given = given or DistillTargets()
    queries = {k: _unit(v) for k, v in given.queries.items()}
    documents = {k: _unit(v) for k, v in given.documents.items()}
    want_q = [t for t in dict.fromkeys(p.query for p in pairs) if t not in queries]
    docs = (t for p in pairs for t in [p.positive, *p.negatives[: config.negatives_per_query]])
    want_d = [t for t in dict.fromkeys(docs) if t not in documents]
    if want_q or want_d:
        spec = read_model_spec(parent_path)
        parent = _load(parent_path, _device()).eval().requires_grad_(False)
        tokenizer = AutoTokenizer.from_pretrained(str(parent_path))
        for todo, prefix, out in (
            (want_q, spec.query_prefix, queries),
            (want_d, spec.document_prefix, documents),
        ):
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                with torch.no_grad():
                    vecs = _embed(
                        parent,
                        tokenizer,
                        [prefix + t for t in chunk],
                        spec=spec,
                        max_tokens=config.max_tokens,
                    )
                out.update(zip(chunk, vecs.float().cpu().numpy(), strict=True))
        del parent
    return DistillTargets(queries=queries, documents=documents)


def _unit(vector: np.ndarray) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


# --------------------------------------------------------------------------- checkpoints


def _fingerprint(pairs: Sequence[TrainPair], config: FinetuneConfig, parent_path: str) -> str:
    """Identifies the run a checkpoint belongs to, so a stale one is never silently resumed."""
    h = hashlib.sha256()
    h.update(json.dumps(asdict(config), sort_keys=True).encode())
    h.update(str(Path(parent_path).resolve()).encode())
    for p in pairs:
        h.update(json.dumps([p.query, p.positive, p.negatives]).encode())
    return h.hexdigest()


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(directory: Path, payload: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (CHECKPOINT_FILE + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, directory / CHECKPOINT_FILE)  # atomic: a kill mid-write keeps the old one


def _load_checkpoint(directory: Path | None, fingerprint: str) -> dict | None:
    if directory is None or not (directory / CHECKPOINT_FILE).exists():
        return None
    payload = torch.load(directory / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    if payload.get("fingerprint") != fingerprint:
        raise ValueError(
            f"checkpoint in {directory} belongs to a different run (other pairs, config or "
            "parent); use a fresh checkpoint_dir"
        )
    return payload


# --------------------------------------------------------------------------- output


def export_model(
    *, model: torch.nn.Module, tokenizer, parent_path: str | Path, out_dir: Path
) -> None:
    """Weights + tokenizer + the parent's sentence-transformers files, so that both
    read_model_spec and sentence-transformers load the child exactly like the parent."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    parent = Path(parent_path)
    for name in _ST_FILES:
        if (parent / name).exists():
            shutil.copy2(parent / name, out_dir / name)
    for folder in _module_folders(parent):
        shutil.copytree(parent / folder, out_dir / folder, dirs_exist_ok=True)


def _module_folders(parent: Path) -> list[str]:
    modules = parent / "modules.json"
    if not modules.exists():
        return []
    paths = [m.get("path", "") for m in json.loads(modules.read_text())]
    return [p for p in paths if p and (parent / p).is_dir()]


# --------------------------------------------------------------------------- main loop


@dataclass
class _Run:
    model: torch.nn.Module
    parent: torch.nn.Module | None
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    spec: ModelSpec
    step: int
    loss_curve: list[dict]
    targets: DistillTargets | None = None


def _start(*, parent_path: str, config: FinetuneConfig, total: int, resume: dict | None) -> _Run:
    from transformers import AutoTokenizer

    torch.manual_seed(config.seed)
    device = _device()
    model = _load(parent_path, device)
    parent = None
    if config.distill_weight > 0 and config.parent_forward_each_step:
        parent = _load(parent_path, device).eval().requires_grad_(False)
    optimizer = _optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(_warmup_steps(config, total), total)
    )
    run = _Run(
        model=model.train(),
        parent=parent,
        tokenizer=AutoTokenizer.from_pretrained(parent_path),
        optimizer=optimizer,
        scheduler=scheduler,
        spec=read_model_spec(parent_path),
        step=0,
        loss_curve=[],
    )
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        _set_rng_state(resume["rng"])
        run.step = int(resume["step"])
        run.loss_curve = list(resume["loss_curve"])
    return run


def _checkpoint(run: _Run, directory: Path | None, fingerprint: str) -> None:
    if directory is None:
        return
    payload = {
        "fingerprint": fingerprint,
        "step": run.step,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "rng": _rng_state(),
        "loss_curve": run.loss_curve,
    }
    _save_checkpoint(directory, payload)


def _train_step(
    run: _Run,
    pairs: Sequence[TrainPair],
    config: FinetuneConfig,
    total: int,
    known: Mapping[str, Collection[str]] | None = None,
) -> StepInfo:
    started = time.perf_counter()
    batch = assemble_batch(
        pairs, negatives_per_query=config.negatives_per_query, spec=run.spec, known=known
    )
    lr = run.optimizer.param_groups[0]["lr"]
    loss, infonce, distill = _step_loss(
        model=run.model,
        parent=run.parent,
        tokenizer=run.tokenizer,
        batch=batch,
        spec=run.spec,
        config=config,
        cached=run.targets,
    )
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    run.step += 1
    return StepInfo(
        step=run.step,
        total_steps=total,
        loss=float(loss.detach()),
        infonce=infonce,
        distill=distill,
        lr=float(lr),
        seconds=time.perf_counter() - started,
    )


def finetune(
    *,
    parent_path: str | Path,
    pairs: Sequence[TrainPair],
    out_dir: str | Path,
    config: FinetuneConfig,
    checkpoint_dir: str | Path | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    targets: DistillTargets | None = None,
    known: Mapping[str, Collection[str]] | None = None,
) -> FinetuneResult:
    """Fine-tune a child of the model at `parent_path` and write it to `out_dir`.

    `targets` are parent embeddings the caller already has (the parent index's document
    vectors); the missing ones are encoded once before the first step.

    `known` maps a query text to document texts judged relevant to it beyond `pairs` (a run
    drawn from a larger set of judgements); such a positive is never a negative, and
    neither is any positive among `pairs`.

    Resumes from `checkpoint_dir` when it holds a checkpoint of this same run. `should_stop`
    is polled between steps; when it returns True the run checkpoints and returns with
    stopped=True and nothing in out_dir (without a checkpoint_dir the progress is lost).
    """
    parent_path = str(parent_path)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    total = _total_steps(config, len(pairs))
    plan = plan_batches(
        n_pairs=len(pairs), batch_size=config.batch_size, total_steps=total, seed=config.seed
    )
    fingerprint = _fingerprint(pairs, config, parent_path)
    known = known_positives(pairs, also=known)  # the whole set's, not only each batch's
    run = _start(
        parent_path=parent_path,
        config=config,
        total=total,
        resume=_load_checkpoint(ckpt_dir, fingerprint),
    )
    if config.distill_weight > 0 and not config.parent_forward_each_step and run.step < total:
        run.targets = distill_targets_complete(
            parent_path=parent_path, pairs=pairs, config=config, given=targets
        )
    while run.step < total:
        if should_stop is not None and should_stop():
            _checkpoint(run, ckpt_dir, fingerprint)
            return FinetuneResult(str(out_dir), run.step, run.loss_curve, stopped=True)
        batch = [pairs[i] for i in plan[run.step]]
        info = _train_step(run, batch, config, total, known)
        run.loss_curve.append({k: v for k, v in asdict(info).items() if k != "total_steps"})
        if on_step is not None:
            on_step(info)
        if config.checkpoint_every > 0 and run.step % config.checkpoint_every == 0:
            _checkpoint(run, ckpt_dir, fingerprint)
    # Final checkpoint first: a crash while exporting then only re-exports, it does not retrain.
    _checkpoint(run, ckpt_dir, fingerprint)
    export_model(
        model=run.model, tokenizer=run.tokenizer, parent_path=parent_path, out_dir=Path(out_dir)
    )
    return FinetuneResult(str(out_dir), run.step, run.loss_curve, stopped=False)
