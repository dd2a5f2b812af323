"""The `finetune` job's work (declared in continual/jobs.py): train a child ModelVersion from its parent on (query, positive) pairs,
register it with its lineage and its QDC drift vector.

Training itself is workers.ml.training.finetune (InfoNCE + distillation, resumable from a
checkpoint directory); this module turns a job's params into pairs, reports progress,
and registers the result exactly once even if the worker dies halfway through.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
from django.conf import settings

from embedhub.core.errors import ApplicationError
from embedhub.corpora.models import Corpus, Document
from embedhub.evaluation import selectors as evaluation_selectors
from embedhub.evaluation.models import QuerySet
from embedhub.jobs.services import JobCancelled, JobLost
from embedhub.registry import training_sets
from embedhub.registry.encoders import encoder_for
from embedhub.registry.models import ModelVersion
from embedhub.registry.services import model_version_register_child
from embedhub.vectors import selectors as vector_selectors
from embedhub.vectors.compensation import query_vectors
from embedhub.vectors.models import VectorIndex
from workers.ml.drift import drift_vector
from workers.ml.encoder import Encoder
from workers.ml.spec import read_model_spec
from workers.ml.training import FinetuneConfig, TrainPair, finetune, mine_hard_negatives

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------ pairs


def _job_dir(job) -> Path:
    return Path(settings.ARTIFACT_ROOT) / "jobs" / str(job.pk)


def _query_set_pairs(query_set: QuerySet) -> list[TrainPair]:
    """(query text, positive document text) per judgement with relevance > 0, in a fixed order."""
    texts = dict(evaluation_selectors.query_set_queries(query_set=query_set))
    qrels = evaluation_selectors.query_set_qrels(query_set=query_set)
    judged = sorted((q, d) for q, docs in qrels.items() for d, rel in docs.items() if rel > 0)
    docs = {
        ext: vector_selectors.document_text(title, text)
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
    todo = [p for p in pairs if not p.negatives]
    doc_ids, _, doc_vecs = vector_selectors.index_vectors(index=index)
    if not todo or not doc_ids:
        return 0
    rows = Document.objects.filter(id__in=doc_ids).values_list("id", "title", "text")
    text_of = {pk: vector_selectors.document_text(title, text) for pk, title, text in rows}
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
        owner=job.owner,
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
    child = Encoder(read_model_spec(child_dir))
    queries = list(dict.fromkeys(p.query for p in pairs))
    return drift_vector(child=child, parent=encoder_for(model_version=parent), queries=queries)
