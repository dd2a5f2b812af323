"""The quality gate of the int8 runtime: what an `onnx-int8` index loses against fp32.

Measured by the job that builds the index, after its vectors are written and before it
becomes searchable, on a bounded sample: the index's stored int8 vectors against the same
documents encoded in fp32 (the `onnx` runtime: the same graph unquantised, which gives the
torch vectors to a cosine of 0.9999+):
- the cosine between each sample document's two vectors;
- with a query set on the corpus, nDCG@10 of its judged queries over the sample, each
  encoding searching its own vectors. A corpus of at most RUNTIME_GATE_DOCS documents is
  the sample (the exact delta); a larger one is sampled as query after query with its
  judged documents and the int8 index's own top 10 for it (read from the stored vectors),
  until the budget is reached. The int8 ranking of a sampled query is then its full-corpus
  one, while fp32 only loses documents that were never judged relevant, which can only
  raise its score: the measured loss errs on the side of refusing.
Without a query set only the cosine can be measured, and it must reach MIN_COSINE.
A chunked index holds several vectors per document: there the sample is encoded whole
(truncated at the model's limit) in int8 too, measuring the runtime, not the chunking.

A loss over QUALITY_MAX_LOSS_POINTS fails the job (the index stays unsearchable, with the
measurement on it) unless the job says `force: true`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import numpy as np
from django.conf import settings
from django.utils import timezone

from embedhub.core.errors import ApplicationError
from embedhub.registry.encoders import encoder_for
from embedhub.vectors import selectors
from embedhub.vectors.models import VectorIndex
from workers.ml.quality import Encoded, encoding_loss
from workers.ml.search import TopK

QUALITY_MAX_LOSS_POINTS = 0.5
MIN_COSINE = 0.98  # the only check left without queries: naive int8 measured ~0.94
GATED_RUNTIMES = (VectorIndex.Runtime.ONNX_INT8,)
REFERENCE_RUNTIME = VectorIndex.Runtime.ONNX
COSINE_ONLY_SAMPLE = 256
MAX_QUERIES = 1000
MINED_DEPTH = 10  # the candidate's top 10 for a query: the documents nDCG@10 looks at

# (query set id, [(query id, text)], {query id: {document external id: relevance}})
JudgedQueries = tuple[int, list[tuple[str, str]], dict[str, dict[str, int]]]
_providers: list[Callable[..., JudgedQueries | None]] = []


class QualityRefused(ApplicationError):
    code = "quality_gate"


def judged_queries_provider_register(provider: Callable[..., JudgedQueries | None]) -> None:
    """The evaluation app owns query sets and sits above this one (layering): it registers
    `provider(corpus_id=)` at start-up, returning the query set the gate should use."""
    if provider not in _providers:
        _providers.append(provider)


def _judged_queries(corpus_id: int) -> JudgedQueries | None:
    for provider in _providers:
        if found := provider(corpus_id=corpus_id):
            return found
    return None


# ------------------------------------------------------------------ the gate


def index_quality_gate(*, index: VectorIndex, ctx, force: bool, embedded: int, total: int):
    """Measure (or reuse the measurement of unchanged vectors), store it on the index and
    refuse a loss over the limit unless forced. None for runtimes that are not gated."""
    if index.runtime not in GATED_RUNTIMES:
        return None
    stored = index.quality or {}
    reusable = embedded == 0 and stored.get("corpus_documents") == total and "passed" in stored
    quality = stored if reusable else _measure(index=index, ctx=ctx, total=total)
    quality = {**quality, **_verdict(quality)}
    # A refusal the owner overrode stays overridden while the vectors stay the same.
    accepted = force or (reusable and stored.get("forced", False))
    quality["forced"] = bool(accepted) and not quality["passed"]
    VectorIndex.objects.filter(pk=index.pk).update(quality=quality)
    index.quality = quality
    if not quality["passed"] and not quality["forced"]:
        raise QualityRefused(
            f"index {index.pk} ({index.runtime}) refused by the quality gate: "
            f"{quality['verdict']}. Submit the job again with force: true to keep it anyway, "
            "or use the onnx or torch runtime"
        )
    return quality


def _verdict(quality: dict) -> dict:
    delta = quality.get("ndcg@10_delta_points")
    if delta is not None:
        passed = delta >= -QUALITY_MAX_LOSS_POINTS
        verdict = (
            f"nDCG@10 {quality['ndcg@10']:.4f} vs {quality['ndcg@10_reference']:.4f} in fp32 "
            f"({delta:+.2f} points, limit -{QUALITY_MAX_LOSS_POINTS}) on "
            f"{quality['queries']} queries over {quality['documents']} documents; mean cosine "
            f"to fp32 {quality['mean_cosine']:.4f}"
        )
    else:
        passed = quality["mean_cosine"] >= MIN_COSINE
        verdict = (
            f"mean cosine to fp32 {quality['mean_cosine']:.4f} (at least {MIN_COSINE}) on "
            f"{quality['documents']} documents; no query set, so nDCG@10 was not measured"
        )
    return {"passed": passed, "verdict": verdict}


def _measure(*, index: VectorIndex, ctx, total: int) -> dict:
    started = time.monotonic()
    candidate = encoder_for(model_version=index.model_version, runtime=index.runtime)
    reference = encoder_for(model_version=index.model_version, runtime=REFERENCE_RUNTIME)
    budget = settings.EMBEDHUB["RUNTIME_GATE_DOCS"]
    judged = _judged_queries(index.corpus_id)
    note = _noter(ctx, total)
    if judged is None:
        doc_ids, queries, qrels, candidate_queries = _cosine_sample(index), [], {}, None
    else:
        note("choosing queries and documents")
        doc_ids, queries, qrels, candidate_queries = _sample(
            index=index, judged=judged, encoder=candidate, budget=budget, total=total
        )
    docs = selectors.document_texts(corpus_id=index.corpus_id, document_ids=doc_ids)
    texts, query_texts = [text for _, _, text in docs], [text for _, text in queries]
    note(f"encoding {len(docs)} sample documents in fp32 and {index.runtime}")
    ref = Encoded(_encode(reference, texts, ctx), _encode_queries(reference, query_texts))
    cand = Encoded(_candidate_docs(index, docs, candidate, ctx), candidate_queries)
    loss = encoding_loss(
        reference=ref,
        candidate=cand,
        doc_ids=[external_id for _, external_id, _ in docs],
        query_ids=[qid for qid, _ in queries],
        qrels=qrels,
    )
    return {
        **loss,
        "runtime": index.runtime,
        "reference": f"{REFERENCE_RUNTIME} (fp32)",
        "query_set": judged[0] if judged else None,
        "documents": len(docs),
        "corpus_documents": total,
        "sampled": len(docs) < total,
        "seconds": round(time.monotonic() - started, 1),
        "measured_at": timezone.now().isoformat(),
    }


def _noter(ctx, total: int):
    def note(what: str) -> None:
        ctx.progress(total, total=total, unit="docs", note=f"quality gate: {what}")

    return note


def _encode(encoder, texts: list[str], ctx) -> np.ndarray:
    """Documents in input order, with a cancel point per batch (a sample takes minutes)."""
    out = np.empty((len(texts), encoder.dimension), dtype=np.float32)
    for batch in encoder.iter_encode(enumerate(texts), kind="document"):
        out[batch.keys] = batch.vectors
        ctx.check_cancel()
    return out


def _candidate_docs(index: VectorIndex, docs: list[tuple], encoder, ctx) -> np.ndarray:
    """The index's own stored vectors where it holds one per document (truncate), else the
    documents encoded whole: what the index holds is what is measured, halfvec included."""
    if index.chunking == VectorIndex.Chunking.TRUNCATE:
        stored = selectors.index_vectors_of(index=index, document_ids=[d for d, _, _ in docs])
        if len(stored) == len(docs):
            return np.stack([stored[doc_id] for doc_id, _, _ in docs])
    return _encode(encoder, [text for _, _, text in docs], ctx)


def _encode_queries(encoder, texts: list[str]) -> np.ndarray | None:
    return encoder.encode(texts, kind="query") if texts else None


def _sample(*, index: VectorIndex, judged: JudgedQueries, encoder, budget: int, total: int):
    """(document ids, queries, their qrels, their candidate vectors): see the module
    docstring. Queries none of whose relevant documents are in the corpus are left out."""
    _, queries, qrels = judged
    relevant = {qid: {d for d, rel in qrels.get(qid, {}).items() if rel > 0} for qid, _ in queries}
    known = selectors.document_ids_by_external_id(
        corpus_id=index.corpus_id, external_ids={d for docs in relevant.values() for d in docs}
    )
    queries = [(qid, text) for qid, text in queries if relevant[qid] & known.keys()]
    random.Random(0).shuffle(queries)  # a fixed order: a retry measures the same sample
    queries = queries[:MAX_QUERIES]
    vectors = _encode_queries(encoder, [text for _, text in queries])
    if vectors is None:
        return _cosine_sample(index), [], {}, None
    if total <= budget:
        all_ids = selectors.document_ids_sample(corpus_id=index.corpus_id, n=total)
        return all_ids, queries, {q: qrels[q] for q, _ in queries}, vectors
    mined = _stored_top(index=index, vectors=vectors)
    chosen, docs = [], set()
    for i, (qid, _) in enumerate(queries):
        wanted = {known[d] for d in relevant[qid] if d in known} | set(mined[i])
        if chosen and len(docs | wanted) > budget:
            break
        chosen.append(i)
        docs |= wanted
    kept = [queries[i] for i in chosen]
    return sorted(docs), kept, {q: qrels[q] for q, _ in kept}, vectors[chosen]


def _cosine_sample(index: VectorIndex) -> list[int]:
    return selectors.document_ids_sample(corpus_id=index.corpus_id, n=COSINE_ONLY_SAMPLE)


def _stored_top(*, index: VectorIndex, vectors: np.ndarray) -> list[list[int]]:
    """Each query's top MINED_DEPTH document ids among the index's stored vectors (exact)."""
    top = TopK(vectors, k=MINED_DEPTH)
    for doc_ids, block in selectors.index_vector_blocks(index=index):
        top.add(block, doc_ids)
    doc_ids, _ = top.result()
    return [[int(d) for d in row if d >= 0] for row in doc_ids]
