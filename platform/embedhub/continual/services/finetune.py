"""The `finetune` job's work (declared in continual/jobs.py): train a child ModelVersion from its parent on (query, positive) pairs,
register it with its lineage, its QDC drift vector and its compensation adapter.

Cheap by construction: the distillation targets of documents are the vectors the parent's
index already holds, the parent embeds the training queries once (for training, Δ and the
adapter alike), and only the child's embeddings are computed at the end.

Training itself is workers.ml.training.finetune (InfoNCE + distillation, resumable from a
checkpoint directory); this module turns a job's params into pairs, reports progress,
and registers the result exactly once even if the worker dies halfway through.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from django.conf import settings

from embedhub.continual.services.corpus_adapters import corpus_adapters_fit
from embedhub.core.errors import ApplicationError
from embedhub.corpora.models import Corpus, Document
from embedhub.evaluation import selectors as evaluation_selectors
from embedhub.evaluation.models import QuerySet
from embedhub.jobs.services import JobCancelled, JobLost
from embedhub.registry import selectors as registry_selectors
from embedhub.registry import training_sets
from embedhub.registry.encoders import encoder_for
from embedhub.registry.models import ModelVersion
from embedhub.registry.services import ADAPTER_FILE, model_version_register_child
from embedhub.vectors import selectors as vector_selectors
from embedhub.vectors.compensation import query_vectors
from embedhub.vectors.models import VectorIndex
from workers.ml.adapter import RetrievalProbe, fit_adapter
from workers.ml.drift import drift_vector_of
from workers.ml.encoder import Encoder
from workers.ml.spec import read_model_spec
from workers.ml.training import (
    DistillTargets,
    FinetuneConfig,
    TrainPair,
    finetune,
    known_positives,
    mine_hard_negatives,
    pairs_drawn,
)

# Documents sampled (over all the owner's corpora indexed by the parent) to fit the adapter
# on besides the training queries; their parent vectors come from the index, only the child
# encodes them. A config key of the job ("adapter_documents") overrides it.
ADAPTER_DOCUMENTS = 1000
# Judged training queries kept out of the adapter's fit to choose it by retrieval.
PROBE_QUERIES = 200

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


def _index_texts(index: VectorIndex) -> tuple[list[int], list[str], np.ndarray]:
    """(document ids, the texts the index embedded, their vectors) of the whole index."""
    doc_ids, _, doc_vecs = vector_selectors.index_vectors(index=index)
    rows = Document.objects.filter(id__in=doc_ids).values_list("id", "title", "text")
    text_of = {pk: vector_selectors.document_text(title, text) for pk, title, text in rows}
    return doc_ids, [text_of[pk] for pk in doc_ids], doc_vecs


def _mine(
    *,
    pairs: list[TrainPair],
    known: dict[str, set[str]],
    index: VectorIndex,
    texts: list[str],
    doc_vecs: np.ndarray,
    k: int,
    skip_top: int,
) -> int:
    """Fill in hard negatives for pairs that have none; returns how many pairs got some.
    `known` holds every positive text of each query, the undrawn pairs' too."""
    todo = [p for p in pairs if not p.negatives]
    if not todo or not texts:
        return 0
    rows_by_text: dict[str, set[int]] = {}
    for row, text in enumerate(texts):
        rows_by_text.setdefault(text, set()).add(row)
    # Every positive of a query (it may have many judgements) is excluded from its negatives.
    queries = list(dict.fromkeys(p.query for p in todo))
    positives_of = {
        q: {row for text in known.get(q, ()) for row in rows_by_text.get(text, ())} for q in queries
    }
    qvecs, _ = query_vectors(index=index, texts=queries, model_version=index.model_version)
    mined = mine_hard_negatives(
        query_vecs=qvecs,
        doc_vecs=doc_vecs,
        positives=[positives_of[q] for q in queries],
        k=k,
        skip_top=skip_top,
    )
    negatives = {q: [texts[r] for r in rows] for q, rows in zip(queries, mined, strict=True)}
    for p in todo:
        p.negatives = list(negatives[p.query])  # never a positive: all known ones were excluded
    return sum(1 for p in todo if p.negatives)


def _pairs_file(job) -> Path:
    return _job_dir(job) / "pairs.jsonl"


def _targets_file(job) -> Path:
    return _job_dir(job) / "targets.json"


def _targets_save(*, job, index: VectorIndex, doc_ids: list[int], texts: list[str], pairs) -> int:
    """Which index document each pair text is, so that every attempt can read its parent
    vector (the distillation target) from the index instead of running the parent."""
    wanted = {t for p in pairs for t in (p.positive, *p.negatives)}
    rows = {_text_key(t): pk for pk, t in zip(doc_ids, texts, strict=True) if t in wanted}
    _targets_file(job).write_text(json.dumps({"index": index.pk, "documents": rows}))
    return len(rows)


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _distill_targets(*, job, pairs: list[TrainPair], parent_queries: dict) -> DistillTargets:
    """The parent's embeddings the run already has: the training queries (encoded once)
    and the documents' vectors in the parent's index."""
    documents: dict[str, np.ndarray] = {}
    saved = _targets_file(job)
    if saved.exists():
        meta = json.loads(saved.read_text())
        index = VectorIndex.objects.filter(pk=meta["index"]).first()
        if index is not None:
            vectors = vector_selectors.index_vectors_of(
                index=index, document_ids=meta["documents"].values()
            )
            texts = {t for p in pairs for t in (p.positive, *p.negatives)}
            by_key = {_text_key(t): t for t in texts}
            for key, doc_id in meta["documents"].items():
                if doc_id in vectors and key in by_key:
                    documents[by_key[key]] = vectors[doc_id]
    return DistillTargets(queries=parent_queries, documents=documents)


def _source_pairs(*, params: dict) -> tuple[list[TrainPair], dict]:
    """Every pair the job's source holds (a query set's judgements or a pairs file)."""
    if params.get("query_set"):
        query_set = QuerySet.objects.get(pk=params["query_set"])
        provenance = {
            "source": "query_set",
            "query_set": query_set.pk,
            "query_set_name": query_set.name,
        }
        return _query_set_pairs(query_set), provenance
    path = Path(params["pairs_path"])
    provenance = {
        "source": "file",
        "file": str(path),
        "file_sha256": training_sets.file_sha256(path),
    }
    return training_sets.pairs_read(source=path, file=path.name), provenance


def _pair_texts(pairs: list[TrainPair]) -> list[str]:
    """The distinct document texts of `pairs` (positives and negatives), in a fixed order."""
    return list(dict.fromkeys(t for p in pairs for t in (p.positive, *p.negatives)))


def _known_save(*, path: Path, pairs: list[TrainPair], known: dict[str, set[str]]) -> None:
    """Each query's known positives among the pairs' own texts (the only ones a batch can
    hold), as rows of _pair_texts: a retry masks exactly what the first attempt did, even
    if the query set has been replaced since."""
    row = {text: i for i, text in enumerate(_pair_texts(pairs))}
    # Every query of the source, in its order: undrawn ones still feed Δ and the adapter.
    rows = {q: sorted(row[t] for t in texts if t in row) for q, texts in known.items()}
    path.write_text(json.dumps(rows))


def _known_read(*, path: Path, pairs: list[TrainPair]) -> dict[str, set[str]]:
    texts = _pair_texts(pairs)
    return {q: {texts[i] for i in rows} for q, rows in json.loads(path.read_text()).items()}


def _build_pairs(
    *, job, parent: ModelVersion, ctx
) -> tuple[list[TrainPair], dict, dict[str, set[str]]]:
    """The training pairs, their provenance and each query's known positives. Saved on the
    first attempt so that a resumed run trains on exactly the same data (the checkpoint is
    tied to it)."""
    saved = _pairs_file(job)
    meta_file, known_file = saved.with_suffix(".meta.json"), saved.with_suffix(".known.json")
    if saved.exists() and meta_file.exists() and known_file.exists():
        pairs = training_sets.pairs_read(source=saved, file=saved.name)
        known = _known_read(path=known_file, pairs=pairs)
        return pairs, json.loads(meta_file.read_text()), known
    ctx.progress(0, unit="steps", note="collecting training pairs")
    source, provenance = _source_pairs(params=job.params)
    if not source:
        raise ApplicationError("no training pairs: the query set's judgements match no documents")
    config = _training_config(job.params["config"])
    known = known_positives(source)
    pairs = pairs_drawn(source, config=config)
    saved.parent.mkdir(parents=True, exist_ok=True)
    provenance.update(
        _negatives_prepare(job=job, parent=parent, ctx=ctx, config=config, pairs=pairs, known=known)
    )
    provenance["judgements"] = len(source)
    lines = [
        json.dumps({"query": p.query, "positive": p.positive, "negatives": p.negatives})
        for p in pairs
    ]
    saved.write_text("\n".join(lines) + "\n")
    _known_save(path=known_file, pairs=pairs, known=known)
    meta_file.write_text(json.dumps(provenance))  # last: it marks the saved pairs complete
    return pairs, provenance, known


def _negatives_prepare(
    *, job, parent: ModelVersion, ctx, config: FinetuneConfig, pairs, known
) -> dict:
    """Mine hard negatives from the parent's index of the job's corpus and save which
    index document each pair text is (the distillation targets); returns the provenance."""
    index = _parent_index(corpus_id=job.params.get("corpus"), parent=parent)
    mined = targets = 0
    if index is not None:
        ctx.progress(0, unit="steps", note=f"reading index {index.pk}")
        doc_ids, texts, doc_vecs = _index_texts(index)
        if config.negatives_per_query > 0:
            ctx.progress(0, unit="steps", note=f"mining hard negatives from index {index.pk}")
            mined = _mine(
                pairs=pairs,
                known=known,
                index=index,
                texts=texts,
                doc_vecs=doc_vecs,
                k=config.negatives_per_query,
                skip_top=config.negatives_skip_top,
            )
        if _same_space(index=index, parent=parent):
            targets = _targets_save(job=job, index=index, doc_ids=doc_ids, texts=texts, pairs=pairs)
    return {
        "corpus": job.params.get("corpus"),
        "negatives_index": index.pk if index is not None and mined else None,
        "pairs_with_mined_negatives": mined,
        "negatives_skip_top": config.negatives_skip_top,
        "distill_targets_from_index": targets,
    }


def _same_space(*, index: VectorIndex, parent: ModelVersion) -> bool:
    """Whether the index's vectors are the parent's own embeddings (not a test encoder's)."""
    return not index.encoder and index.dimension == parent.dimension


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
        "adapter": registry_selectors.adapter_summary(child.adapter),
        "artifact_path": child.artifact_path,
    }


def finetune_job_run(*, job, ctx) -> dict:
    # Registered already by an attempt that died before reporting success: do not train twice.
    existing = ModelVersion.objects.filter(provenance__job=job.pk).first()
    if existing is not None:
        return _result(existing)
    parent = ModelVersion.objects.select_related("model").get(pk=job.params["parent"])
    pairs, provenance, known = _build_pairs(job=job, parent=parent, ctx=ctx)
    config = _training_config(job.params["config"])
    reporter = _Reporter(ctx)
    export_dir = _job_dir(job) / "export"
    # Every query of the source, drawn or not: Δ and the adapter only need their embeddings.
    queries = list(dict.fromkeys([*(p.query for p in pairs), *known]))
    ctx.progress(0, unit="steps", note="embedding the training queries with the parent")
    parent_q = encoder_for(model_version=parent).encode(queries, kind="query")
    targets = _distill_targets(
        job=job, pairs=pairs, parent_queries=_training_queries(parent, config, queries, parent_q)
    )
    outcome = finetune(
        parent_path=parent.artifact_path,
        pairs=pairs,
        out_dir=export_dir,
        config=config,
        checkpoint_dir=_job_dir(job) / "checkpoint",
        on_step=reporter.on_step,
        should_stop=reporter.should_stop,
        targets=targets,
        known=known,
    )
    if outcome.stopped:
        raise reporter.stop_reason or JobCancelled()
    ctx.progress(outcome.steps, unit="steps", note="computing the drift vector and the adapter")
    child_encoder = Encoder(read_model_spec(export_dir))
    child_q = child_encoder.encode(queries, kind="query")
    drift = drift_vector_of(child_vecs=child_q, parent_vecs=parent_q)
    adapter = _adapter_fit(
        job=job,
        parent=parent,
        child_encoder=child_encoder,
        queries=_QueryPairs(
            texts=queries,
            child=child_q,
            parent=parent_q,
            positives=_positive_vectors(pairs=pairs, targets=targets),
        ),
        export_dir=export_dir,
    )

    def report(note: str) -> None:
        ctx.check_cancel()
        ctx.progress(outcome.steps, unit="steps", note=note)

    corpora = corpus_adapters_fit(
        job=job, parent=parent, child_encoder=child_encoder, export_dir=export_dir, report=report
    )
    if corpora:
        adapter = {**(adapter or {}), "per_corpus": corpora}
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
        adapter=adapter,
    )
    # The checkpoint holds model + optimizer state (several times the model): free it.
    shutil.rmtree(_job_dir(job) / "checkpoint", ignore_errors=True)
    return _result(child)


def _training_queries(
    parent: ModelVersion, config: FinetuneConfig, queries: list[str], parent_q: np.ndarray
) -> dict[str, np.ndarray]:
    """The parent's search-time query vectors double as distillation targets when training
    truncates texts where search does (otherwise training encodes its own, once)."""
    if config.max_tokens != parent.max_tokens:
        return {}
    return dict(zip(queries, parent_q, strict=True))


# ------------------------------------------------------------------------------ adapter


def _adapter_indexes(*, owner, parent: ModelVersion) -> list[VectorIndex]:
    """One index per corpus of the owner's that the parent built (the active one first),
    holding the parent's own embeddings: the spaces the adapter must map back into."""
    candidates = VectorIndex.objects.filter(
        corpus__owner=owner,
        model_version=parent,
        chunking=VectorIndex.Chunking.TRUNCATE,
        encoder="",
        dimension=parent.dimension,
        state__in=[VectorIndex.State.READY, VectorIndex.State.RETIRED],
    ).select_related("corpus")
    best: dict[int, VectorIndex] = {}
    for index in candidates.order_by("-pk"):
        current = best.get(index.corpus_id)
        if current is None or (
            index.corpus.active_index_id == index.pk != current.corpus.active_index_id
        ):
            best[index.corpus_id] = index
    return [best[c] for c in sorted(best)]


@dataclass
class _QueryPairs:
    """The training queries embedded by both versions, and the parent-index vectors of
    each query's positives (those the index holds), keyed by document text."""

    texts: list[str]
    child: np.ndarray
    parent: np.ndarray
    positives: dict[str, dict[str, np.ndarray]]


def _positive_vectors(
    *, pairs: list[TrainPair], targets: DistillTargets
) -> dict[str, dict[str, np.ndarray]]:
    found: dict[str, dict[str, np.ndarray]] = {}
    for p in pairs:
        if p.positive in targets.documents:
            found.setdefault(p.query, {})[p.positive] = targets.documents[p.positive]
    return found


@dataclass
class _Documents:
    texts: list[str]
    child: np.ndarray
    parent: np.ndarray
    corpora: int


def _adapter_documents(*, job, parent: ModelVersion, child_encoder: Encoder) -> _Documents:
    """A document sample spread over the owner's corpora indexed by the parent: the child
    embeds it, the parent's vectors are read from the index."""
    budget = int(job.params["config"].get("adapter_documents", ADAPTER_DOCUMENTS))
    indexes = _adapter_indexes(owner=job.owner, parent=parent)
    texts: list[str] = []
    child, old = [], []
    for i, index in enumerate(indexes):
        share = (budget - len(texts)) // (len(indexes) - i)
        if share <= 0:
            continue
        ids = vector_selectors.document_ids_sample(corpus_id=index.corpus_id, n=share)
        parent_vecs = vector_selectors.index_vectors_of(index=index, document_ids=ids)
        rows = vector_selectors.document_texts(corpus_id=index.corpus_id, document_ids=parent_vecs)
        if not rows:
            continue
        texts += [text for _, _, text in rows]
        child.append(child_encoder.encode([text for _, _, text in rows], kind="document"))
        old.append(np.stack([parent_vecs[doc_id] for doc_id, _, _ in rows]))
    empty = np.zeros((0, parent.dimension), np.float32)
    return _Documents(
        texts=texts,
        child=np.concatenate(child) if child else empty,
        parent=np.concatenate(old) if old else empty,
        corpora=len(child),
    )


def _probe_split(
    queries: _QueryPairs, docs: _Documents, *, seed: int
) -> tuple[np.ndarray, RetrievalProbe | None]:
    """(rows of the queries to fit on, a probe of the others): a fifth of the queries
    whose positives the parent's index holds are kept out of the fit and searched, mapped,
    against the sampled documents plus their positives, as the held-out retrieval score."""
    judged = [i for i, q in enumerate(queries.texts) if queries.positives.get(q)]
    n_probe = min(PROBE_QUERIES, len(judged) // 5)
    if n_probe < 1:
        return np.arange(len(queries.texts)), None
    chosen = sorted(np.random.default_rng(seed).permutation(judged)[:n_probe].tolist())
    pool_rows = {text: row for row, text in enumerate(docs.texts)}
    pool = list(docs.parent)
    positives = []
    for i in chosen:
        rows = []
        for text, vector in queries.positives[queries.texts[i]].items():
            if text not in pool_rows:
                pool_rows[text] = len(pool)
                pool.append(vector)
            rows.append(pool_rows[text])
        positives.append(rows)
    probe = RetrievalProbe(
        queries=queries.child[chosen], positives=positives, pool=np.stack(pool).astype(np.float32)
    )
    keep = np.setdiff1d(np.arange(len(queries.texts)), chosen)
    return keep, probe


def _adapter_fit(
    *,
    job,
    parent: ModelVersion,
    child_encoder: Encoder,
    queries: _QueryPairs,
    export_dir: Path,
) -> dict | None:
    """Fit the child → parent adapter on the training queries and the document sample,
    save it beside the weights and return what to record; None when there are too few
    pairs to hold any out."""
    docs = _adapter_documents(job=job, parent=parent, child_encoder=child_encoder)
    seed = int(job.params["config"].get("seed", 0))
    keep, probe = _probe_split(queries, docs, seed=seed)
    x = np.concatenate([queries.child[keep], docs.child]).astype(np.float32)
    y = np.concatenate([queries.parent[keep], docs.parent]).astype(np.float32)
    if len(x) < 2:
        logger.warning("job %s: %d pairs, too few to fit an adapter", job.pk, len(x))
        return None
    is_query = np.arange(len(x)) < len(keep)
    adapter = fit_adapter(x, y, seed=seed, is_query=is_query, probe=probe)
    (export_dir / ADAPTER_FILE).write_bytes(adapter.to_bytes())
    return {
        "method": adapter.method,
        "ridge_lambda": adapter.ridge_lambda,
        **{k: v for k, v in adapter.scores.items() if k != "pairs"},
        "pairs": len(x),
        "queries": int(len(keep)),
        "documents": len(docs.texts),
        "corpora": docs.corpora,
    }
