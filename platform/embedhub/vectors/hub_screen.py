"""Hubness screening of a screened corpus, run when an index is to serve (the second half
of corpora/screening.py, whose ingest half scores text alone).

An index is screened before it serves: when a job activates it (vectors/services.py
index_activate_screened: a first build, a reindex's or a policy job's swap), before the
swap, and by a build of the index that is already active, once its vectors are
written and before it builds HNSW (once per build, never per shard). A shadow build (one
that does not activate) quarantines nothing: it would change what the live corpus serves
and what a policy job compares. The documents the ingest screen scored (screen_score set)
that this index holds a current vector for but has not yet scored by hubness are scored:

- the known queries are the corpus's query sets' queries, a seeded sample of at most
  MAX_KNOWN_QUERIES of them (the same on every build), encoded as search encodes queries
  for this index (its model version and runtime);
- each query's HUB_K-th best score comes from the index's clean vectors, exactly, in one
  pass of blocks of BLOCK_ROWS vectors: memory holds queries x block scores, however large
  the corpus. Clean is every document not quarantined and already hubness-scored (on any
  index) or never screened at all; documents never hubness-scored are left out, since a
  hub among them would raise the k-th scores it is measured against;
- a document's hubness is how many known queries it would enter the top HUB_K of: a new
  document's against those k-th scores, one in the clean reference (scored before, on
  another index) its own in-index count from the same pass. The bar is the clean
  documents' own hubness at the corpus's screening rate, floored so that a passage no
  known query ranks in its top HUB_K is never flagged.

Documents over the bar are quarantined (corpora.screening.documents_hubness_record): kept,
listed for their owner, out of search. Each scored document records the index it was
scored on, so the next build of the same index skips it and another index (another
model's vectors) scores it again when it is activated. Chunk 0 stands for a chunked
document, as in the audit.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from django.db.models import Count, TextField
from django.db.models.functions import MD5, Cast

from embedhub.corpora import screening
from embedhub.corpora.models import Corpus
from embedhub.vectors import selectors
from embedhub.vectors.compensation import query_vectors
from embedhub.vectors.models import VectorIndex
from workers.ml.detectors import (
    HUBNESS,
    HubBar,
    HubReference,
    hub_bar,
    hub_reference,
    hubness,
    sorted_member,
)

HUB_K = 10
MAX_KNOWN_QUERIES = 2_000  # top-10 statistics settle long before; encoding them is the cost
BLOCK_ROWS = 4_096  # vectors per matmul: 2,000 queries x 4,096 float32 scores = 32 MB
MIN_CLEAN_DOCUMENTS = screening.MIN_SCREEN_DOCUMENTS


def corpus_known_queries(*, corpus: Corpus, limit: int) -> tuple[list[str], int]:
    """(texts of at most `limit` distinct queries of the corpus's query sets, how many
    queries the sets hold). The sample is ordered by a hash of the query id: spread over
    the sets, the same on every build.

    Read through the corpus's reverse relation: vectors must not import the evaluation
    app, which imports vectors."""
    sets = corpus.query_sets.all()
    total = sets.aggregate(n=Count("queries"))["n"] or 0
    texts = (
        sets.filter(queries__isnull=False)
        .order_by(MD5(Cast("queries__id", output_field=TextField())))
        .values_list("queries__text", flat=True)[:limit]
    )
    return list(dict.fromkeys(t for t in texts if t and t.strip())), total


def index_hub_screen(*, index: VectorIndex, ctx, done: int) -> dict | None:
    """Score this index's pending screened documents by hubness and quarantine those over
    the bar; the `screening` result, or None when the corpus is not screened.
    `done`: the job's progress, which the report of this step keeps where it is."""
    corpus = Corpus.objects.get(pk=index.corpus_id)
    if not corpus.screening_enabled:
        return None
    candidates, scored = selectors.hub_screen_candidates(
        index=index, marker=screening.HUBNESS_INDEX, feature=HUBNESS
    )
    if not len(candidates):
        return _skipped("no document scored at ingest awaits a hubness check on this index")
    texts, total = corpus_known_queries(corpus=corpus, limit=MAX_KNOWN_QUERIES)
    if not texts:
        return _skipped(
            "the corpus has no queries to measure hubness against: upload a query set; the "
            f"{len(candidates)} documents waiting are scored at the next build",
            waiting=len(candidates),
        )
    note = f"screening {len(candidates)} documents by hubness against {len(texts)} queries"
    ctx.progress(done, total=done, unit="docs", note=note)
    known, _ = query_vectors(index=index, texts=texts, compensation="none")
    fresh = candidates[~scored]  # sorted, as candidates are
    clean_ids: list[np.ndarray] = []
    reference = hub_reference(known, _clean_blocks(index, fresh, clean_ids), k=HUB_K)
    if reference.n_clean < MIN_CLEAN_DOCUMENTS:
        return _skipped(
            f"{reference.n_clean} clean documents with vectors: too few to calibrate hubness "
            f"on (at least {MIN_CLEAN_DOCUMENTS})",
            waiting=len(candidates),
        )
    bar = hub_bar(reference.clean_hubness, fpr=corpus.screening_fpr)
    clean = _Clean(np.concatenate(clean_ids), reference)
    recorded = _score(index, candidates, known, clean, bar, ctx)
    return {
        "feature": HUBNESS,
        "k": HUB_K,
        "fpr": corpus.screening_fpr,
        "threshold": bar.threshold,
        "known_queries": len(texts),
        "known_queries_total": total,
        "clean_documents": reference.n_clean,
        "skipped": "",
        **recorded,
    }


def index_hub_screen_deferred(*, index: VectorIndex) -> dict | None:
    """The `screening` result of a build that does not serve (a shadow): nothing scored
    until the index is activated. None when the corpus is not screened."""
    if not Corpus.objects.filter(pk=index.corpus_id, screening_enabled=True).exists():
        return None
    return _skipped(
        "the index is not active: its documents are screened by hubness when it is activated"
    )


def _skipped(reason: str, *, waiting: int = 0) -> dict:
    return {
        "feature": HUBNESS,
        "screened": 0,
        "quarantined": 0,
        "quarantined_ids": [],
        "threshold": None,
        "waiting": waiting,
        "skipped": reason,
    }


def _clean_blocks(
    index: VectorIndex, fresh: np.ndarray, kept: list[np.ndarray]
) -> Iterator[np.ndarray]:
    # Documents never scored by hubness are no reference for themselves: a hub among them
    # would raise the k-th scores it is measured against. Those scored before (and not
    # quarantined) stay: without them a reindex would have almost no reference. `kept`
    # collects the reference's ids, in the order hub_reference counts its rows.
    for ids, vectors in selectors.index_vector_blocks(index=index, block_rows=BLOCK_ROWS):
        clean = ~sorted_member(ids, fresh)
        kept.append(ids[clean])
        yield vectors[clean]


class _Clean:
    """The clean reference's document ids (sorted: index_vector_blocks reads in id order)
    and each one's in-index hubness."""

    def __init__(self, ids: np.ndarray, reference: HubReference):
        self.ids, self.reference = ids, reference

    def hubness(self, ids: np.ndarray, vectors: np.ndarray, known: np.ndarray) -> np.ndarray:
        # A reference document is among the k-th scores it would be compared with: its
        # count comes from the pass itself, where it is one of the k best or not.
        inside = sorted_member(ids, self.ids)
        hits = np.zeros(len(ids), np.float64)
        if inside.any():
            rows = np.searchsorted(self.ids, ids[inside])
            hits[inside] = self.reference.clean_hubness[rows]
        if (~inside).any():
            hits[~inside] = hubness(
                vectors[~inside], query_vecs=known, kth_scores=self.reference.kth_scores
            )
        return hits


def _score(
    index: VectorIndex,
    candidates: np.ndarray,
    known: np.ndarray,
    clean: _Clean,
    bar: HubBar,
    ctx,
) -> dict:
    screened, quarantined, already, approved = 0, [], 0, 0
    for start in range(0, len(candidates), BLOCK_ROWS):
        ctx.check_cancel()
        ids, hashes, vectors = selectors.index_current_vectors_of(
            index=index, document_ids=candidates[start : start + BLOCK_ROWS]
        )
        if not len(ids):
            continue  # changed since the vector was written: the next build scores them
        hits = clean.hubness(ids, vectors, known)
        recorded = screening.documents_hubness_record(
            corpus_id=index.corpus_id,
            index_id=index.pk,
            document_ids=ids.tolist(),
            content_hashes=hashes,
            hubness=hits.tolist(),
            z=bar.z(hits).tolist(),
            flagged=bar.flags(hits).tolist(),
        )
        screened += len(ids)
        quarantined += recorded.quarantined
        already += recorded.already_quarantined
        approved += recorded.approved
    listed = screening.MAX_LISTED_IDS
    return {
        "screened": screened,
        "quarantined": len(quarantined),
        "quarantined_ids": quarantined[:listed],
        "quarantined_ids_truncated": len(quarantined) > listed,
        "over_bar_already_quarantined": already,
        "over_bar_approved": approved,
    }
