"""The `finetune` job: train a child ModelVersion from its parent on (query, positive) pairs,
register it with its lineage and its QDC drift vector.

Training itself is workers.ml.training.finetune (InfoNCE + distillation, resumable from a
checkpoint directory); this module turns a job's params into pairs, reports progress,
and registers the result exactly once even if the worker dies halfway through.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import Max

from embedhub.core.errors import ApplicationError
from embedhub.corpora.models import Corpus, Document
from embedhub.evaluation import selectors as evaluation_selectors
from embedhub.evaluation.models import Qrel, QuerySet
from embedhub.jobs.services import JobCancelled, JobLost
from embedhub.registry import training_sets
from embedhub.registry.encoders import encoder_for
from embedhub.registry.models import EmbeddingModel, ModelVersion
from embedhub.vectors import selectors as vector_selectors
from embedhub.vectors.models import VectorIndex
from workers.ml.training import FinetuneConfig, TrainPair

logger = logging.getLogger(__name__)

# (type, lowest allowed, highest allowed) of each config key a job may set.
CONFIG_LIMITS: dict[str, tuple[type, float, float]] = {
    "lr": (float, 1e-8, 1e-2),
    "epochs": (int, 1, 100),
    "max_steps": (int, 1, 1_000_000),
    "batch_size": (int, 2, 1024),
    "seed": (int, 0, 2**31 - 1),
    "max_tokens": (int, 8, 512),
    "distill_weight": (float, 0.0, 100.0),
    "negatives_per_query": (int, 0, 64),
    "checkpoint_every": (int, 1, 1_000_000),
    "warmup_steps": (int, 0, 1_000_000),
}
MAX_PAIRS = 2_000_000


# ------------------------------------------------------------------------------ prepare


def _config(raw) -> dict:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ApplicationError('config: must be an object, e.g. {"lr": 2e-5, "epochs": 1}')
    unknown = sorted(set(raw) - set(CONFIG_LIMITS))
    if unknown:
        raise ApplicationError(f"config: unknown keys {unknown}; allowed: {sorted(CONFIG_LIMITS)}")
    config = {}
    for key, value in raw.items():
        kind, low, high = CONFIG_LIMITS[key]
        if value is None:
            continue
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and kind is int:
            ok = float(value).is_integer()
        if not ok or not low <= value <= high:
            raise ApplicationError(f"config.{key}: must be {kind.__name__} in [{low}, {high}]")
        config[key] = kind(value)
    return config


def _data_source(*, user, params: dict) -> tuple[dict, Corpus | None]:
    """Exactly one of query_set / training_set / pairs_path, checked and normalised."""
    given = [k for k in ("query_set", "training_set", "pairs_path") if params.get(k)]
    if len(given) != 1:
        raise ApplicationError(
            "give exactly one source of training pairs: query_set (an evaluation query set "
            "with judgements), training_set (the id of an uploaded JSONL) or pairs_path"
        )
    corpus = None
    if params.get("corpus"):
        corpus = vector_selectors.corpus_for_user(user=user, corpus_id=params["corpus"])
    if given == ["query_set"]:
        query_set = evaluation_selectors.query_set_get(user=user, query_set_id=params["query_set"])
        if not Qrel.objects.filter(query_set=query_set, relevance__gt=0).exists():
            raise ApplicationError(f"query_set {query_set.pk} has no positive judgements")
        return {"query_set": query_set.pk}, query_set.corpus
    if given == ["training_set"]:
        path = training_sets.training_set_path(user=user, sha256=params["training_set"])
    else:
        path = training_sets.pairs_path_check(user=user, path=params["pairs_path"])
    # Validated now, so a malformed file is a 400 with its line number, not a failed job.
    pairs = training_sets.pairs_read(source=path, file=path.name)
    if len(pairs) > MAX_PAIRS:
        raise ApplicationError(f"{path.name}: {len(pairs)} pairs; at most {MAX_PAIRS}")
    return {"pairs_path": str(path)}, corpus


def finetune_job_prepare(*, user, params: dict) -> tuple[dict, Corpus | None]:
    from embedhub.vectors.services import model_version_resolve

    if params.get("parent") in (None, ""):
        raise ApplicationError("parent: the id of the model version to fine-tune is required")
    parent = model_version_resolve(version_id=params["parent"])
    source, corpus = _data_source(user=user, params=params)
    normalised = {
        "parent": parent.pk,
        **source,
        "corpus": corpus.pk if corpus else None,
        "config": _config(params.get("config")),
    }
    return normalised, corpus


# ------------------------------------------------------------------------------ pairs


def _job_dir(job) -> Path:
    return Path(settings.ARTIFACT_ROOT) / "jobs" / str(job.pk)


def _query_set_pairs(query_set: QuerySet) -> list[TrainPair]:
    """(query text, positive document text) per judgement with relevance > 0, in a fixed order."""
    from embedhub.vectors.services import _document_text  # the text an index embeds

    texts = dict(evaluation_selectors.query_set_queries(query_set=query_set))
    qrels = evaluation_selectors.query_set_qrels(query_set=query_set)
    judged = sorted((q, d) for q, docs in qrels.items() for d, rel in docs.items() if rel > 0)
    docs = {
        ext: _document_text(title, text)
        for ext, title, text in Document.objects.filter(
            corpus_id=query_set.corpus_id, external_id__in={d for _, d in judged}
        ).values_list("external_id", "title", "text")
    }
    return [
        TrainPair(query=texts[q], positive=docs[d])
        for q, d in judged
        if q in texts and d in docs  # judgements naming unknown queries/documents are skipped
    ]


def _parent_index(*, corpus_id: int | None, parent: ModelVersion) -> VectorIndex | None:
    """The parent's index of the corpus to mine negatives from (the active one if it is)."""
    if corpus_id is None:
        return None
    candidates = VectorIndex.objects.filter(
        corpus_id=corpus_id,
        model_version=parent,
        chunking=VectorIndex.Chunking.TRUNCATE,
        state__in=[VectorIndex.State.READY, VectorIndex.State.RETIRED],
    ).select_related("corpus", "model_version")
    active_id = Corpus.objects.filter(pk=corpus_id).values_list("active_index_id", flat=True)[0]
    return min(candidates, key=lambda i: (i.pk != active_id, -i.pk), default=None)


def _mine(*, pairs: list[TrainPair], index: VectorIndex, k: int) -> int:
    """Fill in hard negatives for pairs that have none; returns how many pairs got some."""
    from embedhub.vectors.compensation import query_vectors
    from embedhub.vectors.services import _document_text
    from workers.ml.training import mine_hard_negatives

    todo = [p for p in pairs if not p.negatives]
    doc_ids, _, doc_vecs = vector_selectors.index_vectors(index=index)
    if not todo or not doc_ids:
        return 0
    rows = Document.objects.filter(id__in=doc_ids).values_list("id", "title", "text")
    text_of = {pk: _document_text(title, text) for pk, title, text in rows}
    texts = [text_of[pk] for pk in doc_ids]
    rows_by_text: dict[str, set[int]] = {}
    for row, text in enumerate(texts):
        rows_by_text.setdefault(text, set()).add(row)
    # Every positive of a query (it may have several pairs) is excluded from its negatives.
    positives_of: dict[str, set[int]] = {}
    for p in pairs:
        positives_of.setdefault(p.query, set()).update(rows_by_text.get(p.positive, ()))
    queries = list(dict.fromkeys(p.query for p in todo))
    qvecs, _ = query_vectors(index=index, texts=queries, model_version=index.model_version)
    mined = mine_hard_negatives(
        query_vecs=qvecs, doc_vecs=doc_vecs, positives=[positives_of[q] for q in queries], k=k
    )
    negatives = {q: [texts[r] for r in rows] for q, rows in zip(queries, mined, strict=True)}
    for p in todo:
        p.negatives = [t for t in negatives[p.query] if t != p.positive]
    return sum(1 for p in todo if p.negatives)


def _pairs_file(job) -> Path:
    return _job_dir(job) / "pairs.jsonl"


def _build_pairs(*, job, parent: ModelVersion, ctx) -> tuple[list[TrainPair], dict]:
    """The training pairs and their provenance; saved on the first attempt so that a resumed
    run trains on exactly the same data (the checkpoint is tied to it)."""
    params = job.params
    saved = _pairs_file(job)
    meta_file = saved.with_suffix(".meta.json")
    if saved.exists() and meta_file.exists():
        pairs = training_sets.pairs_read(source=saved, file=saved.name)
        return pairs, json.loads(meta_file.read_text())
    ctx.progress(0, unit="steps", note="collecting training pairs")
    if params.get("query_set"):
        query_set = QuerySet.objects.get(pk=params["query_set"])
        pairs = _query_set_pairs(query_set)
        provenance = {
            "source": "query_set",
            "query_set": query_set.pk,
            "query_set_name": query_set.name,
        }
    else:
        path = Path(params["pairs_path"])
        pairs = training_sets.pairs_read(source=path, file=path.name)
        provenance = {
            "source": "file",
            "file": str(path),
            "file_sha256": training_sets.file_sha256(path),
        }
    if not pairs:
        raise ApplicationError("no training pairs: the query set's judgements match no documents")
    k = params["config"].get("negatives_per_query", FinetuneConfig.negatives_per_query)
    index = _parent_index(corpus_id=params.get("corpus"), parent=parent)
    mined = 0
    if index is not None and k > 0:
        ctx.progress(0, unit="steps", note=f"mining hard negatives from index {index.pk}")
        mined = _mine(pairs=pairs, index=index, k=k)
    provenance.update(
        {
            "corpus": params.get("corpus"),
            "negatives_index": index.pk if index is not None and mined else None,
            "pairs_with_mined_negatives": mined,
        }
    )
    saved.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"query": p.query, "positive": p.positive, "negatives": p.negatives})
        for p in pairs
    ]
    saved.write_text("\n".join(lines) + "\n")
    meta_file.write_text(json.dumps(provenance))
    return pairs, provenance


def _pairs_digest(pairs: list[TrainPair]) -> str:
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.query, p.positive, p.negatives]).encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------ run


class _Reporter:
    """Connects training to the job: progress per step, and a stop flag instead of an
    exception, so that finetune() checkpoints before we stop (an exception raised inside
    on_step/should_stop would skip its checkpoint)."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.stop_reason: Exception | None = None

    def on_step(self, info) -> None:
        try:
            self.ctx.progress(
                info.step,
                total=info.total_steps,
                unit="steps",
                note=f"loss {info.loss:.4f}",
                checkpoint={"step": info.step},
            )
        except (JobCancelled, JobLost) as exc:
            self.stop_reason = exc

    def should_stop(self) -> bool:
        if self.stop_reason is None:
            try:
                self.ctx.check_cancel()
            except (JobCancelled, JobLost) as exc:
                self.stop_reason = exc
        return self.stop_reason is not None


def _training_config(config: dict) -> FinetuneConfig:
    known = {f.name for f in fields(FinetuneConfig)}
    return FinetuneConfig(**{k: v for k, v in config.items() if k in known})


def _result(child: ModelVersion) -> dict:
    curve = child.loss_curve or []
    return {
        "model_version": child.pk,
        "version": child.version,
        "parent": child.parent_id,
        "steps": len(curve),
        "final_loss": curve[-1]["loss"] if curve else None,
        "drift_norm": child.drift_norm,
        "artifact_path": child.artifact_path,
    }


def finetune_job_run(*, job, ctx) -> dict:
    from workers.ml.training import finetune

    # Registered already by an attempt that died before reporting success: do not train twice.
    existing = ModelVersion.objects.filter(provenance__job=job.pk).first()
    if existing is not None:
        return _result(existing)
    parent = ModelVersion.objects.select_related("model").get(pk=job.params["parent"])
    pairs, provenance = _build_pairs(job=job, parent=parent, ctx=ctx)
    config = _training_config(job.params["config"])
    reporter = _Reporter(ctx)
    export_dir = _job_dir(job) / "export"
    outcome = finetune(
        parent_path=parent.artifact_path,
        pairs=pairs,
        out_dir=export_dir,
        config=config,
        checkpoint_dir=_job_dir(job) / "checkpoint",
        on_step=reporter.on_step,
        should_stop=reporter.should_stop,
    )
    if outcome.stopped:
        raise reporter.stop_reason or JobCancelled()
    ctx.progress(outcome.steps, unit="steps", note="computing the drift vector")
    drift = _drift(parent=parent, child_dir=export_dir, pairs=pairs)
    ctx.check_cancel()  # the last point where a cancel still leaves no child behind
    provenance.update(
        {
            "job": job.pk,
            "pairs": len(pairs),
            "queries": len({p.query for p in pairs}),
            "pairs_sha256": _pairs_digest(pairs),
        }
    )
    child = model_version_register_child(
        parent=parent,
        export_dir=export_dir,
        drift=drift,
        loss_curve=outcome.loss_curve,
        training_params={**asdict(config), "parent": parent.pk},
        provenance=provenance,
    )
    # The checkpoint holds model + optimizer state (several times the model): free it.
    shutil.rmtree(_job_dir(job) / "checkpoint", ignore_errors=True)
    return _result(child)


def _drift(*, parent: ModelVersion, child_dir: Path, pairs: list[TrainPair]) -> np.ndarray:
    """Δ over the distinct training queries, child and parent encoded as search encodes them."""
    from workers.ml.drift import drift_vector
    from workers.ml.encoder import Encoder
    from workers.ml.spec import read_model_spec

    child = Encoder(read_model_spec(child_dir))
    queries = list(dict.fromkeys(p.query for p in pairs))
    return drift_vector(child=child, parent=encoder_for(model_version=parent), queries=queries)


def model_version_register_child(
    *,
    parent: ModelVersion,
    export_dir: Path,
    drift: np.ndarray,
    loss_curve: list[dict],
    training_params: dict,
    provenance: dict,
) -> ModelVersion:
    """Move the child's weights to ARTIFACT_ROOT/models/<name>/v<N>/ and register it there
    (registry.services.model_version_register) with its drift vector.

    The model row stays locked from choosing N to the commit, so two jobs finishing at
    once never pick the same folder (the registry numbers the version under the same lock).
    """
    from embedhub.registry.services import model_version_register

    with transaction.atomic():
        model = EmbeddingModel.objects.select_for_update().get(pk=parent.model_id)
        number = (model.versions.aggregate(n=Max("version"))["n"] or 0) + 1
        final = Path(settings.ARTIFACT_ROOT) / "models" / model.name / f"v{number}"
        if final.exists():  # left by a crash between the move and the commit: no row owns it
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(export_dir, final)
        child = model_version_register(
            source=str(final),
            name=model.name,
            parent=parent,
            status=ModelVersion.Status.READY,
            drift=drift.astype(np.float32),
            drift_norm=float(np.linalg.norm(drift)),
            training_params=training_params,
            provenance=provenance,
            loss_curve=loss_curve,
        )
    if child.version != number:
        raise RuntimeError(f"registered {child} but its weights are in {final}")
    logger.info("registered %s (parent %s, drift norm %.4f)", child, parent, child.drift_norm)
    return child
