"""Reads on vector indexes: lookups, pending documents, vectors, and search (with QDC)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.shortcuts import get_object_or_404
from pgvector.psycopg import register_vector

from embedhub.core.errors import ApplicationError, NotFound
from embedhub.core.selectors import owned_by
from embedhub.corpora.models import Corpus, Document
from embedhub.vectors import tables
from embedhub.vectors.models import ServingPolicy, VectorIndex


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
    *, corpus, model_version, storage, chunking, encoder, runtime="torch", **chunk
) -> VectorIndex | None:
    """An existing, not-dropped index built the same way (so re-embedding is incremental;
    an index of another runtime holds other vectors and is never reused)."""
    qs = VectorIndex.objects.filter(
        corpus=corpus,
        model_version=model_version,
        storage=storage,
        chunking=chunking,
        encoder=encoder,
        runtime=runtime,
    ).exclude(state__in=[VectorIndex.State.DROPPED, VectorIndex.State.FAILED])
    if chunk:
        qs = qs.filter(**chunk)
    return qs.order_by("-created_at").first()


# A slice of a corpus by document id, lo <= id < hi (hi None: to the end): one shard's work.
IdRange = tuple[int, int | None]
ALL_IDS: IdRange = (0, None)


def _id_range_sql(ids: IdRange, column: str = "id") -> tuple[str, list[int]]:
    lo, hi = ids
    if hi is None:
        return f" AND {column} >= %s", [lo]
    return f" AND {column} >= %s AND {column} < %s", [lo, hi]


def corpus_document_count(*, corpus_id: int, ids: IdRange = ALL_IDS) -> int:
    lo, hi = ids
    qs = Document.objects.filter(corpus_id=corpus_id, id__gte=lo)
    return (qs.filter(id__lt=hi) if hi is not None else qs).count()


def corpus_id_boundaries(*, corpus_id: int, size: int) -> list[int]:
    """The first document id of every `size` documents in id order: shard i covers ids from
    boundary i up to boundary i+1, so shards hold equal document counts whatever the ids."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT id FROM (SELECT id, row_number() OVER (ORDER BY id) AS n"
            " FROM corpora_document WHERE corpus_id = %s) d WHERE (n - 1) %% %s = 0 ORDER BY id",
            [corpus_id, size],
        )
        return [row[0] for row in cur.fetchall()]


_PENDING = (
    "FROM corpora_document d WHERE d.corpus_id = %s{ids} AND NOT EXISTS "
    "(SELECT 1 FROM {table} v WHERE v.document_id = d.id AND v.content_hash = d.content_hash)"
)


def index_pending_count(*, index: VectorIndex, ids: IdRange = ALL_IDS) -> int:
    where, args = _id_range_sql(ids, "d.id")
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) " + _PENDING.format(table=index.table_name, ids=where),
            [index.corpus_id, *args],
        )
        return cur.fetchone()[0]


def index_pending_pages(
    *, index: VectorIndex, page_size: int, ids: IdRange = ALL_IDS
) -> Iterator[list[tuple]]:
    """Documents needing (re-)embedding in id order, a page at a time.

    Keyset pagination over the corpus, then one primary-key probe per candidate: written as
    a plain anti-join, the planner may hash the whole (growing, unanalysed) vector table for
    every page, which turns a large build quadratic.
    """
    last_id = ids[0] - 1
    upper, args = ("", []) if ids[1] is None else (" AND id < %s", [ids[1]])
    sql = (
        f"SELECT p.id, p.title, p.text, p.content_hash, EXISTS (SELECT 1 FROM {index.table_name} v "
        "WHERE v.document_id = p.id AND v.content_hash = p.content_hash) AS done "
        "FROM (SELECT id, title, text, content_hash FROM corpora_document "
        f"WHERE corpus_id = %s AND id > %s{upper} ORDER BY id LIMIT %s) p ORDER BY p.id"
    )
    while True:
        with connection.cursor() as cur:
            cur.execute(sql, [index.corpus_id, last_id, *args, page_size])
            rows = cur.fetchall()
        if not rows:
            return
        last_id = rows[-1][0]
        page = [row[:4] for row in rows if not row[4]]
        if page:
            yield page


def _rows_matrix(rows, *, column: int, dimension: int) -> np.ndarray:
    """The pgvector values in `column` of fetched rows, as one float32 matrix."""
    if not rows:
        return np.zeros((0, dimension), dtype=np.float32)
    return np.stack([r[column].to_numpy() for r in rows]).astype(np.float32, copy=False)


def _rows_ids(rows) -> np.ndarray:
    return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))


def index_vectors(*, index: VectorIndex) -> tuple[list[int], list[str], np.ndarray]:
    """All (document id, external id, vector) of an index, chunk 0 only, in memory at once
    (hard-negative mining); evaluation and audits stream `index_vector_blocks` instead."""
    connection.ensure_connection()
    register_vector(connection.connection)  # vectors arrive as numpy arrays, not text
    with connection.cursor() as cur:
        cur.execute(
            f"SELECT v.document_id, d.external_id, v.embedding::vector FROM {index.table_name} v "
            "JOIN corpora_document d ON d.id = v.document_id WHERE v.chunk = 0"
            " AND NOT d.quarantined ORDER BY v.document_id"
        )
        rows = cur.fetchall()
    matrix = _rows_matrix(rows, column=2, dimension=index.dimension)
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
            "AND NOT d.quarantined ORDER BY v.document_id"
        )
        while rows := cur.fetchmany(size):
            yield _rows_ids(rows), _rows_matrix(rows, column=1, dimension=index.dimension)


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


def document_texts(*, corpus_id: int, document_ids) -> list[tuple[int, str, str]]:
    """(document id, external id, the text an index embeds) of the corpus's documents among
    `document_ids`, in id order."""
    rows = Document.objects.filter(corpus_id=corpus_id, id__in=[int(i) for i in document_ids])
    return [
        (doc_id, external_id, document_text(title, text))
        for doc_id, external_id, title, text in rows.order_by("id").values_list(
            "id", "external_id", "title", "text"
        )
    ]


def index_vectors_of(*, index: VectorIndex, document_ids) -> dict[int, np.ndarray]:
    """{document id: its chunk-0 vector} for those of `document_ids` the index holds."""
    connection.ensure_connection()
    register_vector(connection.connection)  # vectors arrive as numpy arrays, not text
    with connection.cursor() as cur:
        cur.execute(
            f"SELECT document_id, embedding::vector FROM {index.table_name} "
            "WHERE chunk = 0 AND document_id = ANY(%s)",
            [[int(i) for i in document_ids]],
        )
        return {doc_id: vector.to_numpy().astype(np.float32) for doc_id, vector in cur.fetchall()}


def index_current_vectors_of(
    *, index: VectorIndex, document_ids
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(document ids, content hashes, chunk-0 vectors) of those of `document_ids` whose
    vector in this index is of their current text, in id order."""
    connection.ensure_connection()
    register_vector(connection.connection)  # vectors arrive as numpy arrays, not text
    with connection.cursor() as cur:
        cur.execute(
            f"SELECT v.document_id, v.content_hash, v.embedding::vector FROM {index.table_name} v"
            " JOIN corpora_document d ON d.id = v.document_id AND d.content_hash = v.content_hash"
            " WHERE v.chunk = 0 AND v.document_id = ANY(%s) ORDER BY v.document_id",
            [[int(i) for i in document_ids]],
        )
        rows = cur.fetchall()
    vectors = _rows_matrix(rows, column=2, dimension=index.dimension)
    return _rows_ids(rows), [r[1] for r in rows], vectors


def hub_screen_candidates(
    *, index: VectorIndex, marker: str, feature: str
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scored) of the corpus's documents the ingest screen scored (screen_score set)
    whose screen_features do not yet name this index under `marker`, and which the index
    holds a current vector for: what a hubness screen of this index has still to score, in
    id order. `scored`: whether each already holds a `feature` score (from another index)."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT d.id, (d.screen_features -> %s) IS NOT NULL FROM corpora_document d"
            " WHERE d.corpus_id = %s AND d.screen_score IS NOT NULL"
            " AND (d.screen_features ->> %s) IS DISTINCT FROM %s"
            f" AND EXISTS (SELECT 1 FROM {index.table_name} v WHERE v.document_id = d.id"
            "  AND v.chunk = 0 AND v.content_hash = d.content_hash) ORDER BY d.id",
            [feature, index.corpus_id, marker, str(index.pk)],
        )
        rows = cur.fetchall()
    return _rows_ids(rows), np.fromiter((row[1] for row in rows), dtype=bool, count=len(rows))


def document_ids_sample(*, corpus_id: int, n: int) -> list[int]:
    """`n` document ids of the corpus, the same ones on every call (ordered by a hash of
    the id, so the sample is spread over the corpus yet a retry measures the same)."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT id FROM corpora_document WHERE corpus_id = %s ORDER BY md5(id::text) LIMIT %s",
            [corpus_id, n],
        )
        return [row[0] for row in cur.fetchall()]


HNSW_MAX_EF_SEARCH = 1000  # pgvector refuses more


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

    HNSW returns the best k of the candidates it found, in order. pgvector's iterative scan
    (relaxed order) finds candidates in batches of ef_search, each sorted within itself; a
    later batch may hold closer vectors than an earlier one. The first batch is the best
    ef_search found, so up to ef_search rows are read as they come; beyond, the scan is read
    to the end of the batch that holds the last row wanted, and all of those are re-sorted
    by exact distance before the limit (a plain LIMIT would cut that batch short and keep
    farther rows of earlier batches).

    Chunked indexes hold several vectors per document; we fetch more rows and keep each
    document's best chunk, so the document score is its best chunk's score.
    """
    plan = search_plan(index=index, k=k, exact=exact, ef_search=ef_search)
    sql = search_sql(index=index)
    results = []
    with transaction.atomic(), connection.cursor() as cur:
        search_settings_apply(cur, plan=plan, exact=exact)
        for vector in np.atleast_2d(query_vectors):
            literal = tables.vector_literal(vector)
            cur.execute(sql, [literal, literal, plan.candidates, plan.rows])
            results.append(_best_per_document(cur.fetchall(), k))
    return results


@dataclass(frozen=True)
class SearchPlan:
    rows: int  # vector rows wanted (k, or 4k chunks of a chunked index)
    ef_search: int
    candidates: int  # rows read from the scan and re-sorted


def search_plan(*, index: VectorIndex, k: int, exact: bool, ef_search: int | None) -> SearchPlan:
    rows = k * (4 if index.chunking == VectorIndex.Chunking.CHUNK else 1)
    ef = min(int(ef_search or max(40, rows)), HNSW_MAX_EF_SEARCH)
    candidates = rows if exact or rows <= ef else ef * math.ceil(rows / ef)
    return SearchPlan(rows=rows, ef_search=ef, candidates=candidates)


def search_settings_apply(cur, *, plan: SearchPlan, exact: bool) -> None:
    """SET LOCAL, for the search's transaction.

    ANN always scans the HNSW graph: on a small table the planner would rather sort all the
    rows, and "ann" would then mean exact. With sorts disabled the graph is the one way left
    to order the candidates; the outer re-sort still runs (a disabled step that nothing else
    can do is only costed higher)."""
    if exact:
        cur.execute("SET LOCAL enable_indexscan = off")
        return
    cur.execute("SET LOCAL enable_sort = off")
    cur.execute(f"SET LOCAL hnsw.ef_search = {plan.ef_search}")
    cur.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")


def search_sql(*, index: VectorIndex) -> str:
    """Params: the query vector twice, candidates, rows.

    The join stays inside the scan, so it goes on past vectors of deleted documents. The
    outer sort key is `distance + 0`: on `distance` itself the planner takes the scan's
    ORDER BY as already done, sorts only ties (an incremental sort), and stops reading the
    candidates at the limit."""
    cast = "halfvec" if index.storage == VectorIndex.Storage.HALFVEC else "vector"
    return (
        "WITH candidates AS MATERIALIZED ("
        f" SELECT v.document_id, d.external_id, d.title, v.embedding <=> %s::{cast} AS distance,"
        f" v.chunk FROM {index.table_name} v JOIN corpora_document d ON d.id = v.document_id"
        " WHERE NOT d.quarantined"  # held back by the ingest screen until approved
        f" ORDER BY v.embedding <=> %s::{cast} LIMIT %s) "
        "SELECT document_id, external_id, title, 1 - distance AS score, chunk FROM candidates "
        "ORDER BY distance + 0, document_id, chunk LIMIT %s"
    )


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
    if index.encoder and not settings.EMBEDHUB["ALLOW_FAKE_ENCODER"]:
        # Built while the setting was on: its queries would need the fake encoder too.
        raise ApplicationError(
            f"index {index.pk} was built with the {index.encoder!r} test encoder, which this "
            "server turns off (EMBEDHUB_ALLOW_FAKE_ENCODER): reindex it with its model version",
            code="fake_encoder_off",
        )
    return index


def index_get_or_404(*, user, index_id: int) -> VectorIndex:
    return get_object_or_404(index_list(user=user), pk=index_id)


# ------------------------------------------------------------------ serving policies

SEARCHABLE = (VectorIndex.State.READY, VectorIndex.State.RETIRED)


@dataclass(frozen=True)
class Serving:
    """What answers a corpus's queries: the index, the query encoder and the compensation
    (a query-side option of compensation.query_vectors), and the policy they came from."""

    index: VectorIndex
    model_version: object  # registry.ModelVersion
    compensation: str
    policy: ServingPolicy | None = None
    note: str = ""  # why a stored policy was not followed


def version_descends(*, version, ancestor) -> bool:
    """`version` is `ancestor` or one of its descendants (its queries can search an index
    of `ancestor`, with or without compensation)."""
    current = version
    while current is not None:
        if current.pk == ancestor.pk:
            return True
        current = current.parent
    return False


def serving_policy_list(*, user):
    qs = ServingPolicy.objects.select_related("corpus", "index", "query_version__model")
    return owned_by(qs, user=user, field="corpus__owner")


def serving_policy_of(*, corpus: Corpus) -> ServingPolicy | None:
    return (
        ServingPolicy.objects.select_related("index__model_version", "query_version")
        .filter(corpus=corpus)
        .first()
    )


def serving_policy_settings(*, corpus: Corpus) -> ServingPolicy:
    """The corpus's policy row, or an unsaved one holding the defaults a first policy job
    would decide with."""
    return serving_policy_of(corpus=corpus) or ServingPolicy(corpus=corpus)


def corpus_excludes_self(*, corpus_id: int) -> bool:
    """The corpus's setting for evaluations that do not say (false without a policy row)."""
    return ServingPolicy.objects.filter(corpus_id=corpus_id, exclude_self=True).exists()


def serving_resolve(*, corpus: Corpus) -> Serving:
    """The corpus's serving policy applied to its present state. Without a policy (or one
    whose index is gone, or whose version can no longer search it), today's default: the
    active index with its own version and no compensation."""
    active = corpus.active_index
    if active is None:
        raise ApplicationError(
            f"corpus {corpus.pk} has no active index yet: run an embed job first",
            code="no_active_index",
        )
    default = Serving(index=active, model_version=active.model_version, compensation="none")
    policy = serving_policy_of(corpus=corpus)
    if policy is None:
        return default
    index = policy.index or active
    if index.state not in SEARCHABLE:
        return replace(default, note=f"policy index {index.pk} is {index.state}")
    version = policy.query_version or index.model_version
    if not version_descends(version=version, ancestor=index.model_version):
        note = f"policy version {version.pk} does not descend from index {index.pk}'s"
        return replace(default, note=note)
    return Serving(
        index=index, model_version=version, compensation=policy.compensation, policy=policy
    )


def serving_for_request(
    *, user, corpus_id=None, index_id=None, model_version=None, compensation: str | None = None
) -> Serving:
    """Search's target: a named index is searched as asked (no policy); a corpus follows its
    policy, field by field, except where the request names the version or the compensation
    (an explicit version drops the policy's compensation, chosen for its own version)."""
    if index_id:
        index = index_for_search(user=user, index_id=index_id)
        version = model_version or index.model_version
        return Serving(index=index, model_version=version, compensation=compensation or "auto")
    index_for_search(user=user, corpus_id=corpus_id)  # ownership, active index, state
    serving = serving_resolve(corpus=corpus_for_user(user=user, corpus_id=corpus_id))
    if model_version is not None:
        return replace(serving, model_version=model_version, compensation=compensation or "auto")
    if compensation:
        return replace(serving, compensation=compensation)
    return serving
