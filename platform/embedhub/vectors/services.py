"""Writes on vector indexes: create, embed (the `embed` job), activate, drop."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from embedhub.core.errors import Conflict
from embedhub.corpora.models import Corpus
from embedhub.jobs.sharding import job_shards, job_shards_ensure, job_shards_wait
from embedhub.registry.encoders import encoder_for
from embedhub.registry.models import ModelVersion
from embedhub.vectors import hnsw, hub_screen, selectors, tables
from embedhub.vectors.models import ServingPolicy, VectorIndex
from embedhub.vectors.quality import index_quality_gate
from workers.ml.encoder import Chunking, fake_encoder_parse

PAGE_SIZE = 2048  # documents fetched from Postgres per query while streaming


def index_create(
    *,
    owner,
    corpus: Corpus,
    model_version: ModelVersion,
    storage: str = VectorIndex.Storage.VECTOR,
    chunking: str = VectorIndex.Chunking.TRUNCATE,
    chunk_window: int | None = None,
    chunk_overlap: int = 32,
    encoder: str = "",
    runtime: str = VectorIndex.Runtime.TORCH,
) -> VectorIndex:
    dimension = _dimension(model_version, encoder)
    with transaction.atomic():
        index = VectorIndex.objects.create(
            owner=owner,
            corpus=corpus,
            model_version=model_version,
            storage=storage,
            dimension=dimension,
            chunking=chunking,
            chunk_window=chunk_window or model_version.max_tokens,
            chunk_overlap=chunk_overlap,
            encoder=encoder,
            runtime=runtime,
        )
        index.table_name = tables.table_name_for(index.pk)
        index.save(update_fields=["table_name"])
        tables.table_create(table=index.table_name, dimension=dimension, storage=storage)
    return index


def _dimension(model_version: ModelVersion, encoder: str) -> int:
    fake = fake_encoder_parse(encoder) if encoder else None
    return fake[0] if fake else model_version.dimension


@contextmanager
def index_locked(*, index: VectorIndex) -> Iterator[Corpus]:
    """A transaction holding the row lock of the index's corpus, with `index` re-read under it.

    Activate, drop and retention of one corpus's indexes all take this lock, so each sees
    what the one before it committed: a check made on an older snapshot (is it active? is
    it still retired?) could otherwise let retention drop an index a rollback just activated.
    """
    with transaction.atomic():
        corpus = Corpus.objects.select_for_update().get(pk=index.corpus_id)
        index.refresh_from_db()
        yield corpus


def index_activate(*, index: VectorIndex) -> VectorIndex:
    """Make this index the corpus's default for search, at once: the hand activation and
    rollback of the API and the dashboard. No hubness screen here: it can take minutes
    (queries to encode, every vector to read), too long for a request; jobs activate
    through index_activate_screened, and the index's next build screens what is new."""
    return _index_swap(index=index)


def index_activate_screened(
    *, index: VectorIndex, ctx, done: int = 0
) -> tuple[VectorIndex, dict | None]:
    """A job's activation: screen a screened corpus's documents by hubness on the index,
    then swap it in (index_activate); returns the index and the screen's `screening`
    result (None: not screened).

    The screen runs before the swap, so what it quarantines is out of search before the
    index serves. It runs outside the corpus lock's transaction: it reports progress on
    the job row (which the heartbeat writes too) and may take minutes, and a document
    ingested meanwhile is screened by the next build of the index, as after any build.
    `ctx`/`done`: the job's context and progress."""
    index.refresh_from_db()
    _activatable(index)  # before the screen's minutes, not only after them
    screened = None
    active = Corpus.objects.values_list("active_index_id", flat=True).get(pk=index.corpus_id)
    if active != index.pk:  # the active one was screened by its builds
        screened = hub_screen.index_hub_screen(index=index, ctx=ctx, done=done)
    return _index_swap(index=index), screened


def _index_swap(*, index: VectorIndex) -> VectorIndex:
    index.refresh_from_db()
    _activatable(index)
    with index_locked(index=index) as corpus:
        _activatable(index)
        previous = corpus.active_index_id
        corpus.active_index = index
        corpus.save(update_fields=["active_index", "updated_at"])
        if previous != index.pk:
            _serving_policy_follow_active(corpus=corpus, index=index)
        VectorIndex.objects.filter(pk=index.pk).update(
            state=VectorIndex.State.READY, retired_at=None
        )
        if previous and previous != index.pk:
            VectorIndex.objects.filter(pk=previous).update(
                state=VectorIndex.State.RETIRED, retired_at=timezone.now()
            )
    index.refresh_from_db()
    return index


def _activatable(index: VectorIndex) -> None:
    if index.state not in (VectorIndex.State.READY, VectorIndex.State.RETIRED):
        raise Conflict(f"index {index.pk} is {index.state}; only a built index can be activated")


def index_drop(*, index: VectorIndex) -> None:
    with index_locked(index=index) as corpus:
        if corpus.active_index_id == index.pk:
            raise Conflict(f"index {index.pk} is the corpus's active index; activate another first")
        if index.state == VectorIndex.State.DROPPED:
            return  # dropped by someone else meanwhile: nothing left to do
        tables.table_drop(table=index.table_name)
        VectorIndex.objects.filter(pk=index.pk).update(state=VectorIndex.State.DROPPED)
    index.refresh_from_db()


# ------------------------------------------------------------------ building (the embed job)


def index_build(
    *,
    index: VectorIndex,
    ctx,
    batch_size: int | None = None,
    activate=None,
    force: bool = False,
    shard_size: int | None = None,
) -> dict:
    """Embed every document whose vector is missing or stale, pass the runtime's quality
    gate (int8 only; `force` keeps an index it refuses), screen a screened corpus's new
    documents by hubness (vectors/hub_screen.py) if the index serves, then build HNSW and
    mark ready (and activate it: `activate`, or None for a corpus's first index, which the
    activation screens). A shadow (activate=False) is screened when it is activated.

    More than `shard_size` pending documents (default EMBEDHUB_SHARD_SIZE) are embedded by
    shard jobs over document-id ranges, which any number of workers run at once; HNSW is
    built here, once, after the last shard.

    Resuming after a crash is the same call: "pending" is computed from the table itself,
    and each batch's vectors commit together with the job's progress.
    """
    # Loading the model is timed apart: it is paid once per worker process, not per job.
    loading = time.monotonic()
    encoder = encoder_for(
        model_version=index.model_version, override=index.encoder, runtime=index.runtime
    )
    load_seconds = time.monotonic() - loading
    started = time.monotonic()
    with _index_lock(index):
        if index.state in (VectorIndex.State.DROPPED,):
            raise Conflict(f"index {index.pk} was dropped")
        if index.state != VectorIndex.State.READY:
            VectorIndex.objects.filter(pk=index.pk).update(state=VectorIndex.State.BUILDING)
        total = selectors.corpus_document_count(corpus_id=index.corpus_id)
        pending = selectors.index_pending_count(index=index)
        done = total - pending
        ctx.progress(done, total=total, unit="docs", note="embedding")
        size = settings.EMBEDHUB["SHARD_SIZE"] if shard_size is None else shard_size
        if _sharded(ctx=ctx, index=index, size=size, pending=pending):
            chunk_stats, shards = _embed_sharded(
                index=index, ctx=ctx, total=total, size=size, batch_size=batch_size
            )
            # Every document pending at this attempt's start is embedded once the shards
            # end, by one attempt of a shard or another (as in an unsharded build, the
            # counts are of this attempt): the shards' own counts would miss what a lost
            # attempt committed before its shard was re-run.
            embedded = pending
        else:
            embedded, chunk_stats = _embed_pending(
                index=index, encoder=encoder, ctx=ctx, done=done, total=total, batch_size=batch_size
            )
            shards = 0
        embed_seconds = time.monotonic() - started
        quality = index_quality_gate(
            index=index, ctx=ctx, force=force, embedded=embedded, total=total
        )
        screened = _build_screen(index=index, activate=activate, ctx=ctx, done=total)
        ctx.progress(total, total=total, unit="docs", note="building HNSW index")
        stats = _finalise(index=index, activate=activate, ctx=ctx, done=total)
    seconds = time.monotonic() - started
    screened = stats.pop("screening", screened)
    screening = {} if screened is None else {"screening": screened}
    return {
        "index": index.pk,
        "runtime": index.runtime,
        "quality": quality,
        "embedded": embedded,
        "skipped_unchanged": total - pending,
        "vectors": stats["vectors"],
        "documents": stats["documents"],
        "seconds": round(seconds, 3),
        "model_load_seconds": round(load_seconds, 3),
        "embed_seconds": round(embed_seconds, 3),
        "finalise_seconds": round(seconds - embed_seconds, 3),
        "docs_per_second": round(embedded / max(embed_seconds, 1e-9), 1),
        "hnsw": stats["hnsw"],
        "shards": shards,
        **chunk_stats,
        **screening,
    }


def _build_screen(*, index: VectorIndex, activate, ctx, done: int) -> dict | None:
    """The build's hubness screen. Here, once per build, for the index that already serves:
    every shard's vectors are written, and a document it quarantines is out of search before
    the new vectors serve. An index the build activates is screened by the activation; any
    other (a shadow) is not screened: quarantining would change the live corpus, and skew a
    policy job's comparison, for an index that may never serve."""
    active = Corpus.objects.values_list("active_index_id", flat=True).get(pk=index.corpus_id)
    if active == index.pk:
        return hub_screen.index_hub_screen(index=index, ctx=ctx, done=done)
    if activate or (activate is None and active is None):
        return None  # _finalise activates it, and reports the screen
    return hub_screen.index_hub_screen_deferred(index=index)


def _sharded(*, ctx, index: VectorIndex, size: int, pending: int) -> bool:
    """Shard when more is pending than one shard holds, or when an earlier attempt did (its
    shards may still be running). Only a job can shard: a build run in-process outside one
    (a benchmark, a test) has no workers to spread over."""
    job = getattr(ctx, "job", None)
    if job is None:
        return False
    return 0 < size < pending or job_shards(parent=job, scope=_shard_scope(index)).exists()


def _shard_scope(index: VectorIndex) -> dict:
    """What picks this build's shards among the job's: a policy job builds one shadow per
    corpus, each through shards of its own."""
    return {"index": index.pk}


def _embed_sharded(*, index, ctx, total: int, size: int, batch_size) -> tuple[dict, int]:
    """Shards over the whole corpus (so their totals sum to the build's), created once."""
    boundaries = selectors.corpus_id_boundaries(corpus_id=index.corpus_id, size=size)
    ends = [*boundaries[1:], None]
    params = [
        {
            "index": index.pk,
            "batch_size": batch_size,
            "shard": {"lo": lo, "hi": hi, "number": number, "of": len(boundaries)},
        }
        for number, (lo, hi) in enumerate(zip(boundaries, ends, strict=True), start=1)
    ]
    scope = _shard_scope(index)
    job_shards_ensure(
        parent=ctx.job, kind="embed", shard_params=params, scope=scope, corpus=index.corpus
    )
    shards = job_shards_wait(ctx=ctx, unit="docs", total=total, label="embedding", scope=scope)
    cut = {"chunks_dropped": 0, "documents_capped": 0}
    for shard in shards:
        for key in cut:
            cut[key] += shard.result.get(key, 0)
    chunk_stats = cut if index.chunking == VectorIndex.Chunking.CHUNK else {}
    return chunk_stats, len(shards)


def index_shard_embed(*, index: VectorIndex, ctx, lo: int, hi: int | None, batch_size) -> dict:
    """One shard of a sharded build: embed the pending documents with lo <= id < hi.

    No index lock: the parent holds it, and shards write disjoint documents. Exactly once
    as in a whole build: pending comes from the table, each batch commits with progress."""
    if index.state == VectorIndex.State.DROPPED:
        raise Conflict(f"index {index.pk} was dropped")
    ids = (lo, hi)
    encoder = encoder_for(
        model_version=index.model_version, override=index.encoder, runtime=index.runtime
    )
    total = selectors.corpus_document_count(corpus_id=index.corpus_id, ids=ids)
    done = total - selectors.index_pending_count(index=index, ids=ids)
    ctx.progress(done, total=total, unit="docs", note=f"embedding ids {lo}..{hi or 'end'}")
    started = time.monotonic()
    embedded, chunk_stats = _embed_pending(
        index=index,
        encoder=encoder,
        ctx=ctx,
        done=done,
        total=total,
        batch_size=batch_size,
        ids=ids,
    )
    seconds = time.monotonic() - started
    return {
        "index": index.pk,
        "ids": [lo, hi],
        "embedded": embedded,
        "skipped_unchanged": done,
        "embed_seconds": round(seconds, 3),
        "docs_per_second": round(embedded / max(seconds, 1e-9), 1),
        **chunk_stats,
    }


class _index_lock:
    """A session advisory lock: two jobs never build one index at once, and a dead worker's
    lock vanishes with its connection."""

    def __init__(self, index: VectorIndex):
        self.key = int(index.pk)

    def __enter__(self):
        with connection.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(7201, %s)", [self.key])

    def __exit__(self, *exc):
        with connection.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(7201, %s)", [self.key])


def _pending_items(
    index: VectorIndex, hashes: dict, ids: selectors.IdRange
) -> Iterator[tuple[int, str]]:
    for page in selectors.index_pending_pages(index=index, page_size=PAGE_SIZE, ids=ids):
        for doc_id, title, text, content_hash in page:
            hashes[doc_id] = content_hash
            yield doc_id, selectors.document_text(title, text)


def _embed_pending(
    *, index, encoder, ctx, done: int, total: int, batch_size, ids=selectors.ALL_IDS
) -> tuple[int, dict]:
    """Documents embedded, and for a chunked index what the chunk cap dropped."""
    hashes: dict[int, str] = {}
    items = _pending_items(index, hashes, ids)
    if index.chunking == VectorIndex.Chunking.CHUNK:
        cap = settings.EMBEDHUB["MAX_CHUNKS_PER_DOCUMENT"]
        return _embed_chunked(
            index=index,
            encoder=encoder,
            ctx=ctx,
            done=done,
            total=total,
            batch_size=batch_size,
            chunking=Chunking(index.chunk_window, index.chunk_overlap, max_chunks=cap),
            ids=ids,
        )
    embedded = 0
    for batch in encoder.iter_encode(items, kind="document", batch_size=batch_size):
        doc_hashes = [hashes.pop(key) for key in batch.keys]
        with transaction.atomic():
            tables.rows_replace(
                table=index.table_name,
                storage=index.storage,
                doc_ids=list(batch.keys),
                chunks=[0] * len(batch.keys),
                hashes=doc_hashes,
                vectors=batch.vectors,
            )
            embedded += len(batch.keys)
            ctx.progress(done + embedded, total=total, checkpoint={"embedded": done + embedded})
    return embedded, {}


def _embed_chunked(
    *, index, encoder, ctx, done, total, batch_size, chunking, ids
) -> tuple[int, dict]:
    """Chunks of one document may span batches, so whole pages are written at once: a
    document is never left with some of its chunks.

    Windows past the cap are not stored; the counts go into the result, and into the
    checkpoint with each page, so a resumed job still reports the earlier attempts' cuts."""
    embedded = 0
    cut = {key: ctx.checkpoint.get(key, 0) for key in ("chunks_dropped", "documents_capped")}
    for page in selectors.index_pending_pages(index=index, page_size=PAGE_SIZE // 4, ids=ids):
        items = [(doc_id, selectors.document_text(title, text)) for doc_id, title, text, _ in page]
        hashes = {doc_id: content_hash for doc_id, _, _, content_hash in page}
        keys, vectors, capped = [], [], []
        for batch in encoder.iter_encode(items, batch_size=batch_size, chunking=chunking):
            keys.extend(batch.keys)
            vectors.append(batch.vectors)
            capped.extend(batch.capped)
            ctx.check_cancel()
        with transaction.atomic():
            tables.rows_replace(
                table=index.table_name,
                storage=index.storage,
                doc_ids=[k[0] for k in keys],
                chunks=[k[1] for k in keys],
                hashes=[hashes[k[0]] for k in keys],
                vectors=np.concatenate(vectors),
            )
            embedded += len(page)
            cut["chunks_dropped"] += sum(n for _, n in capped)
            cut["documents_capped"] += len(capped)
            ctx.progress(
                done + embedded, total=total, checkpoint={"embedded": done + embedded, **cut}
            )
    return embedded, {**cut, "max_chunks_per_document": chunking.max_chunks}


def _finalise(*, index: VectorIndex, activate, ctx, done: int) -> dict:
    """`done`: the job's progress, which the HNSW build's reports keep where it is."""
    tables.orphans_delete(table=index.table_name, corpus_id=index.corpus_id)
    # Counted before the build, which is sized from it; the index lock keeps other builds
    # from writing this table meanwhile.
    vectors, documents = tables.rows_count(table=index.table_name)
    timings, build = {}, None
    if not tables.hnsw_exists(table=index.table_name):
        started = time.monotonic()
        build = hnsw.hnsw_index_build(index=index, rows=vectors, ctx=ctx, done=done)
        # Kept on the row: the build ran in a worker, /metrics is served by the web process.
        timings["hnsw_build_seconds"] = time.monotonic() - started
        build["seconds"] = round(timings["hnsw_build_seconds"], 3)
    VectorIndex.objects.filter(pk=index.pk).update(
        state=VectorIndex.State.READY, vector_count=vectors, built_at=timezone.now(), **timings
    )
    index.refresh_from_db()
    corpus = index.corpus
    corpus.refresh_from_db()
    screened = {}
    if activate or (activate is None and corpus.active_index_id is None):
        _, report = index_activate_screened(index=index, ctx=ctx, done=done)
        screened = {} if report is None else {"screening": report}
    return {"vectors": vectors, "documents": documents, "hnsw": build, **screened}


# ------------------------------------------------------------------ serving policies


def _serving_policy_follow_active(*, corpus: Corpus, index: VectorIndex) -> None:
    """Activating an index (a reindex's swap, a rollback, a click) is a decision about
    serving: the corpus's policy goes back to "the active index with its own version" and
    keeps its settings; a policy job then writes its own choice over it."""
    ServingPolicy.objects.filter(corpus=corpus).exclude(
        index=None, query_version=None, compensation=ServingPolicy.Compensation.NONE
    ).update(
        index=None,
        query_version=None,
        compensation=ServingPolicy.Compensation.NONE,
        updated_at=timezone.now(),
    )


def serving_policy_settings_update(
    *,
    corpus: Corpus,
    metric: str | None = None,
    tolerance: float | None = None,
    allow_reindex: bool | None = None,
    exclude_self: bool | None = None,
) -> ServingPolicy:
    """The corpus's settings for policy jobs and evaluations (the serving choice itself is
    left alone)."""
    given = {
        "metric": metric,
        "tolerance": tolerance,
        "allow_reindex": allow_reindex,
        "exclude_self": exclude_self,
    }
    with transaction.atomic():
        policy, _ = ServingPolicy.objects.select_for_update().get_or_create(corpus=corpus)
        for field, value in given.items():
            if value is not None:
                setattr(policy, field, value)
        policy.save()
    return policy


def serving_policy_apply(
    *,
    corpus: Corpus,
    index: VectorIndex,
    query_version: ModelVersion,
    compensation: str,
    decision: dict,
    job=None,
) -> ServingPolicy:
    """Serve the corpus's queries from `index`, encoded by `query_version` with
    `compensation`, and record why. Stored as the default where it is the default (the
    active index, its own version), so a later activation moves it along."""
    with transaction.atomic():
        locked = Corpus.objects.select_for_update().get(pk=corpus.pk)
        policy, _ = ServingPolicy.objects.select_for_update().get_or_create(corpus=locked)
        policy.index = None if index.pk == locked.active_index_id else index
        policy.query_version = None if query_version.pk == index.model_version_id else query_version
        policy.compensation = compensation
        policy.decision = decision
        policy.decided_by = job
        policy.decided_at = timezone.now()
        policy.save()
    return policy
