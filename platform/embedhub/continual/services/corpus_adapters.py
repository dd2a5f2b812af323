"""Per-corpus compensation adapters, fitted when a fine-tune finishes.

For each of the owner's corpora served by an index an ancestor of the new version built,
workers.ml.adapter.fit_corpus_adapter learns one map from the child's queries straight into
that index's space: a ranking map on a document sample (the index holds the old vectors,
only the child's are computed) blended with a query map on the corpus's own query texts,
by nDCG@10 on judged queries the serving policy does not measure with. It is recorded in
the child's `adapter["per_corpus"]` beside a file in its artifact directory, and
compensation "adapter" takes it, not the child's version adapter, for the child's hop on
any index of that corpus its target version or an ancestor built (vectors/compensation.py).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from django.db.models import F

from embedhub.continual import selectors
from embedhub.evaluation import selectors as evaluation_selectors
from embedhub.evaluation.models import QuerySet
from embedhub.registry.models import ModelVersion
from embedhub.vectors import selectors as vector_selectors
from embedhub.vectors.compensation import query_vectors
from embedhub.vectors.models import VectorIndex
from workers.ml.adapter import CorpusPairs, RetrievalProbe, fit_corpus_adapter, needs_ranking_map
from workers.ml.encoder import Encoder

# Documents per corpus the child embeds for its corpus adapter (config key
# "corpus_adapter_documents"). The ranking map is only as good as its sample: on SciFact
# 5,000 of 5,183 documents recovered most of the reindex gain, 2,000 about a third.
CORPUS_ADAPTER_DOCUMENTS = 5000
CORPUS_ADAPTER_QUERIES = 1000
PROBE_QUERIES = 200
MIN_PROBE_QUERIES = 5
MIN_DOCUMENTS = 10

logger = logging.getLogger(__name__)


def corpus_adapter_indexes(*, owner, parent: ModelVersion) -> list[VectorIndex]:
    """The active index of each of the owner's corpora where the parent or one of its
    ancestors built it: what each corpus serves today, and so what the adapter maps into."""
    ancestors, current = [], parent
    while current is not None:
        ancestors.append(current.pk)
        current = current.parent
    return list(
        VectorIndex.objects.filter(
            corpus__owner=owner,
            corpus__active_index_id=F("pk"),
            model_version_id__in=ancestors,
            chunking=VectorIndex.Chunking.TRUNCATE,
            encoder="",
            state=VectorIndex.State.READY,
        )
        .select_related("corpus", "model_version")
        .order_by("corpus_id")
    )


def _stable(values: list[str], n: int) -> list[str]:
    # The same sample on every attempt: a retried job fits the same adapter.
    return sorted(values, key=lambda v: hashlib.md5(v.encode()).hexdigest())[:n]


def _probe_sets(corpus) -> list[QuerySet]:
    measured = selectors.policy_query_set(corpus=corpus)
    judged = QuerySet.objects.filter(corpus=corpus, qrels__relevance__gt=0).distinct()
    return list(judged.exclude(pk=measured.pk) if measured else judged)


def _probe(*, index, child_encoder, sample_ids, pool: np.ndarray):
    """(probe or None, its query texts, the query set ids used): a fifth of the judged
    queries of the corpus's query sets other than the one its serving policy is measured
    on (choosing the blend on that one would flatter the adapter the policy then measures)."""
    sets = _probe_sets(index.corpus)
    judged: dict[str, set[str]] = {}
    for query_set in sets:
        texts = dict(evaluation_selectors.query_set_queries(query_set=query_set))
        for qid, docs in evaluation_selectors.query_set_qrels(query_set=query_set).items():
            if qid in texts:
                judged.setdefault(texts[qid], set()).update(d for d, r in docs.items() if r > 0)
    candidates = [t for t, docs in judged.items() if docs]
    # A fifth at most: the rest of the corpus's queries teach the query map.
    chosen = _stable(candidates, min(PROBE_QUERIES, len(candidates) // 5))
    wanted = {d for t in chosen for d in judged[t]}
    ids = vector_selectors.document_ids_by_external_id(
        corpus_id=index.corpus_id, external_ids=wanted
    )
    vectors = vector_selectors.index_vectors_of(index=index, document_ids=ids.values())
    rows = {doc_id: k for k, doc_id in enumerate(sample_ids)}
    extra = []
    for doc_id in vectors:
        if doc_id not in rows:
            rows[doc_id] = len(sample_ids) + len(extra)
            extra.append(vectors[doc_id])
    positives = [[rows[ids[d]] for d in judged[t] if ids.get(d) in vectors] for t in chosen]
    kept = [(t, p) for t, p in zip(chosen, positives, strict=True) if p]
    if len(kept) < MIN_PROBE_QUERIES:
        return None, set(), []
    return (
        RetrievalProbe(
            queries=child_encoder.encode([t for t, _ in kept], kind="query"),
            positives=[p for _, p in kept],
            pool=np.concatenate([pool, np.stack(extra)]) if extra else pool,
        ),
        {t for t, _ in kept},
        [s.pk for s in sets],
    )


def _corpus_queries(corpus, *, leave_out: set[str]) -> list[str]:
    texts = QuerySet.objects.filter(corpus=corpus).values_list("queries__text", flat=True)
    found = {t for t in texts if t and t not in leave_out}
    return _stable(list(found), CORPUS_ADAPTER_QUERIES)


def _document_sample(*, index, budget: int) -> tuple[list[int], list[str], np.ndarray] | None:
    """(document ids, their texts, their vectors in the index) of a stable sample; None when
    the corpus has too few documents for the held-out fifth to rank ten."""
    ids = vector_selectors.document_ids_sample(corpus_id=index.corpus_id, n=budget)
    parent_vecs = vector_selectors.index_vectors_of(index=index, document_ids=ids)
    rows = vector_selectors.document_texts(corpus_id=index.corpus_id, document_ids=parent_vecs)
    if len(rows) < MIN_DOCUMENTS:
        return None
    sample_ids = [doc_id for doc_id, _, _ in rows]
    parent_docs = np.stack([parent_vecs[i] for i in sample_ids])
    return sample_ids, [text for _, _, text in rows], parent_docs


def corpus_adapter_fit(
    *,
    index: VectorIndex,
    child_encoder: Encoder,
    budget: int,
    export_dir: Path,
    seed: int,
    new_task: bool,
    report: Callable[[str], None] = lambda note: None,
) -> dict | None:
    """Fit, save and describe the adapter for the index's corpus; None when the corpus
    has too few documents or queries to fit one. `new_task`: the fine-tune trained on this
    corpus, so without judged queries to choose by, the adapter imitates a reindex there
    and the parent elsewhere (where the child's pass over the sample is then skipped: the
    query map alone needs only queries). `report` gets each stage: the child's pass over
    the sample and the fit take minutes each on a CPU."""
    sample = _document_sample(index=index, budget=budget)
    if sample is None:
        return None
    sample_ids, doc_texts, parent_docs = sample
    probe, probe_texts, probe_sets = _probe(
        index=index, child_encoder=child_encoder, sample_ids=sample_ids, pool=parent_docs
    )
    texts = _corpus_queries(index.corpus, leave_out=probe_texts)
    if len(texts) < 2:
        return None
    unprobed_weight = 1.0 if new_task else 0.0
    child_docs = None
    if needs_ranking_map(probe=probe, unprobed_weight=unprobed_weight):
        report(f"embedding {len(doc_texts):,} of its documents with the new version")
        child_docs = child_encoder.encode(doc_texts, kind="document")
    parent_q, _ = query_vectors(index=index, texts=texts, compensation="none")
    pairs = CorpusPairs(
        child_docs=child_docs,
        parent_docs=parent_docs,
        child_queries=child_encoder.encode(texts, kind="query"),
        parent_queries=parent_q,
    )
    maps = "ranking and query maps" if child_docs is not None else "query map"
    report(f"fitting its {maps} ({len(texts):,} queries)")
    adapter = fit_corpus_adapter(pairs, probe=probe, unprobed_weight=unprobed_weight, seed=seed)
    name = f"adapter-corpus-{index.corpus_id}.npz"
    (export_dir / name).write_bytes(adapter.to_bytes())
    return {
        "target_version": index.model_version_id,
        "index": index.pk,
        "file": name,
        "probe_query_sets": probe_sets if probe is not None else [],
        "new_task": new_task,
        **adapter.scores,
    }


def corpus_adapters_fit(
    *,
    job,
    parent: ModelVersion,
    child_encoder: Encoder,
    export_dir: Path,
    report: Callable[[str], None],
) -> dict[str, dict]:
    """{corpus id: what was fitted} over the owner's corpora (corpus_adapter_indexes)."""
    config = job.params["config"]
    budget = int(config.get("corpus_adapter_documents", CORPUS_ADAPTER_DOCUMENTS))
    seed = int(config.get("seed", 0))
    fitted = {}
    indexes = corpus_adapter_indexes(owner=job.owner, parent=parent) if budget else []
    for i, index in enumerate(indexes):
        prefix = f"adapter for corpus {index.corpus.name!r} ({i + 1}/{len(indexes)})"
        report(prefix)
        entry = corpus_adapter_fit(
            index=index,
            child_encoder=child_encoder,
            budget=budget,
            export_dir=export_dir,
            seed=seed,
            new_task=index.corpus_id == job.params.get("corpus"),
            report=lambda note, prefix=prefix: report(f"{prefix}: {note}"),
        )
        if entry is None:
            logger.info("job %s: corpus %s too small for an adapter", job.pk, index.corpus_id)
            continue
        fitted[str(index.corpus_id)] = entry
    return fitted
