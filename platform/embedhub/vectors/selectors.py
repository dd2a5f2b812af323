"""Reads on vector indexes: lookups, pending documents, vectors, and search (with QDC)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.shortcuts import get_object_or_404
from pgvector.psycopg import register_vector

from embedhub.core.errors import ApplicationError, NotFound
from embedhub.core.selectors import owned_by
from embedhub.corpora.models import Corpus, Document
from embedhub.vectors import tables
from embedhub.vectors.models import VectorIndex


def document_text(title: str, text: str) -> str:
    """The text an index embeds for a document (fine-tuning pairs use the same)."""
    return f"{title} {text}" if title else text


def corpus_for_user(*, user, corpus_id) -> Corpus:
    if corpus_id in (None, ""):
        raise ApplicationError("corpus: this field is required")
    try:
        return owned_by(Corpus.objects.all(), user=user).get(pk=int(corpus_id))
    except (Corpus.DoesNotExist, TypeError, ValueError):
        raise NotFound(f"corpus {corpus_id} not found") from None


def index_list(*, user, filters: dict | None = None):
    qs = owned_by(VectorIndex.objects.all(), user=user).select_related("corpus", "model_version")
    return qs.filter(**(filters or {}))


def index_get(*, user, index_id) -> VectorIndex:
    try:
        return index_list(user=user).get(pk=int(index_id))
    except (VectorIndex.DoesNotExist, TypeError, ValueError):
        raise NotFound(f"index {index_id} not found") from None


def index_matching(
    *, corpus, model_version, storage, chunking, encoder, **chunk
) -> VectorIndex | None:
    """An existing, not-dropped index built the same way (so re-embedding is incremental)."""
    qs = VectorIndex.objects.filter(
        corpus=corpus,
        model_version=model_version,
        storage=storage,
        chunking=chunking,
        encoder=encoder,
    ).exclude(state__in=[VectorIndex.State.DROPPED, VectorIndex.State.FAILED])
    if chunk:
        qs = qs.filter(**chunk)
    return qs.order_by("-created_at").first()


def corpus_document_count(*, corpus_id: int) -> int:
    return Document.objects.filter(corpus_id=corpus_id).count()


_PENDING = (
    "FROM corpora_document d WHERE d.corpus_id = %s AND NOT EXISTS "
    "(SELECT 1 FROM {table} v WHERE v.document_id = d.id AND v.content_hash = d.content_hash)"
)


def index_pending_count(*, index: VectorIndex) -> int:
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) " + _PENDING.format(table=index.table_name), [index.corpus_id])
        return cur.fetchone()[0]


def index_pending_pages(*, index: VectorIndex, page_size: int) -> Iterator[list[tuple]]:
    """Documents needing (re-)embedding in id order, a page at a time.

    Keyset pagination over the corpus, then one primary-key probe per candidate: written as
    a plain anti-join, the planner may hash the whole (growing, unanalysed) vector table for
    every page, which turns a large build quadratic.
    """
    last_id = 0
    sql = (
        f"SELECT p.id, p.title, p.text, p.content_hash, EXISTS (SELECT 1 FROM {index.table_name} v "
        "WHERE v.document_id = p.id AND v.content_hash = p.content_hash) AS done "
        "FROM (SELECT id, title, text, content_hash FROM corpora_document "
        "WHERE corpus_id = %s AND id > %s ORDER BY id LIMIT %s) p ORDER BY p.id"
    )
    while True:
        with connection.cursor() as cur:
            cur.execute(sql, [index.corpus_id, last_id, page_size])
            rows = cur.fetchall()
        if not rows:
            return
        last_id = rows[-1][0]
        page = [row[:4] for row in rows if not row[4]]
        if page:
            yield page


def index_vectors(*, index: VectorIndex) -> tuple[list[int], list[str], np.ndarray]:
    """All (document id, external id, vector) of an index, chunk 0 only, in memory at once
    (hard-negative mining); evaluation and audits stream `index_vector_blocks` instead."""
    connection.ensure_connection()
    register_vector(connection.connection)  # vectors arrive as numpy arrays, not text
    with connection.cursor() as cur:
        cur.execute(
            f"SELECT v.document_id, d.external_id, v.embedding::vector FROM {index.table_name} v "
            "JOIN corpora_document d ON d.id = v.document_id WHERE v.chunk = 0 ORDER BY v.document_id"
        )
        rows = cur.fetchall()
    if not rows:
        return [], [], np.zeros((0, index.dimension), dtype=np.float32)
    matrix = np.stack([r[2].to_numpy() for r in rows]).astype(np.float32, copy=False)
    return [r[0] for r in rows], [r[1] for r in rows], matrix


def index_vector_blocks(
    *, index: VectorIndex, block_rows: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(document ids, vectors) of an index's chunk-0 vectors in document id order, at most
    `block_rows` (default EMBEDHUB["VECTOR_BLOCK_ROWS"]) at a time, read through a
    server-side cursor: memory holds one block however large the index.

    The cursor lives in a transaction that stays open while the caller iterates, so the
    caller must not report job progress (a write on the job row) inside the loop: it would
    hold the row's lock, and stay invisible, until the last block.
    """
    size = block_rows or settings.EMBEDHUB["VECTOR_BLOCK_ROWS"]
    connection.ensure_connection()
    register_vector(connection.connection)  # vectors arrive as numpy arrays, not text
    # Inside a transaction Django's named cursor is not WITH HOLD, so Postgres streams the
    # rows instead of materialising the whole result first.
    with transaction.atomic(), connection.chunked_cursor() as cur:
        cur.execute(
            f"SELECT v.document_id, v.embedding::vector FROM {index.table_name} v "
            "JOIN corpora_document d ON d.id = v.document_id WHERE v.chunk = 0 "
            "ORDER BY v.document_id"
        )
        while rows := cur.fetchmany(size):
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            yield ids, np.stack([r[1].to_numpy() for r in rows]).astype(np.float32, copy=False)


def document_external_ids(*, document_ids) -> dict[int, str]:
    """{document id: external id} for the given ids (those that still exist)."""
    ids = [int(i) for i in document_ids]
    if not ids:
        return {}
    with connection.cursor() as cur:
        # One array parameter, however many ids: an IN list could pass the protocol's limit.
        cur.execute("SELECT id, external_id FROM corpora_document WHERE id = ANY(%s)", [ids])
        return dict(cur.fetchall())


def document_ids_by_external_id(*, corpus_id: int, external_ids) -> dict[str, int]:
    """{external id: document id} of the corpus's documents among `external_ids`."""
    return dict(
        Document.objects.filter(corpus_id=corpus_id, external_id__in=list(external_ids))
        .values_list("external_id", "id")
        .iterator()
    )


@dataclass(frozen=True)
class Hit:
    document_id: int
    external_id: str
    title: str
    score: float
    chunk: int = 0


def index_search(
    *,
    index: VectorIndex,
    query_vectors: np.ndarray,
    k: int = 10,
    exact: bool = False,
    ef_search: int | None = None,
) -> list[list[Hit]]:
    """Top-k documents per query by cosine. HNSW unless `exact` (a sequential scan).

    Chunked indexes hold several vectors per document; we fetch more rows and keep each
    document's best chunk, so the document score is its best chunk's score.
    """
    cast = "halfvec" if index.storage == VectorIndex.Storage.HALFVEC else "vector"
    oversample = 4 if index.chunking == VectorIndex.Chunking.CHUNK else 1
    sql = (
        f"SELECT v.document_id, d.external_id, d.title, 1 - (v.embedding <=> %s::{cast}) AS score, "
        f"v.chunk FROM {index.table_name} v JOIN corpora_document d ON d.id = v.document_id "
        f"ORDER BY v.embedding <=> %s::{cast} LIMIT %s"
    )
    results = []
    with transaction.atomic(), connection.cursor() as cur:
        if exact:
            cur.execute("SET LOCAL enable_indexscan = off")
        else:
            cur.execute(f"SET LOCAL hnsw.ef_search = {int(ef_search or max(40, k))}")
            # pgvector 0.8: keep scanning when rows are filtered, so k results come back.
            cur.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        for vector in np.atleast_2d(query_vectors):
            literal = tables.vector_literal(vector)
            cur.execute(sql, [literal, literal, k * oversample])
            results.append(_best_per_document(cur.fetchall(), k))
    return results


def _best_per_document(rows: list[tuple], k: int) -> list[Hit]:
    best: dict[int, Hit] = {}
    for doc_id, external_id, title, score, chunk in rows:
        if doc_id not in best or score > best[doc_id].score:
            best[doc_id] = Hit(doc_id, external_id, title, float(score), chunk)
    return sorted(best.values(), key=lambda h: -h.score)[:k]


def index_for_search(*, user, corpus_id=None, index_id=None) -> VectorIndex:
    if index_id:
        index = index_get(user=user, index_id=index_id)
    elif corpus_id:
        corpus = corpus_for_user(user=user, corpus_id=corpus_id)
        if corpus.active_index_id is None:
            raise ApplicationError(
                f"corpus {corpus.pk} has no active index yet: run an embed job first",
                code="no_active_index",
            )
        index = corpus.active_index
    else:
        raise ApplicationError("give either corpus or index")
    if index.state not in (VectorIndex.State.READY, VectorIndex.State.RETIRED):
        raise ApplicationError(f"index {index.pk} is {index.state}, not searchable yet")
    return index


def index_get_or_404(*, user, index_id: int) -> VectorIndex:
    return get_object_or_404(index_list(user=user), pk=index_id)
