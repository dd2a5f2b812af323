"""Writes on evaluation: query set uploads and the `evaluate` job.

An evaluation encodes a query set's judged queries (with drift compensation when the query
encoder is newer than the index), retrieves the top k documents per query, scores the run
with trec_eval semantics (workers.ml.metrics) and stores one EvalRun.

Retrieval:
- exact on a truncated index: for each batch of queries the index's vectors stream by in
  blocks through a server-side cursor and each block is searched in numpy
  (workers.ml.search.TopK merges the blocks' top k): exact, deterministic, far faster than
  one sequential-scan SQL query per query, and memory stays bounded however large the
  index. Batches are large because each is one pass over the index.
- exact on a chunked index: vectors.selectors.index_search(exact=True), which already keeps
  each document's best chunk (the document score is its best chunk's score). It fetches
  4*k chunk rows per query, so a ranking can hold fewer than k documents when a few
  documents own most of the top chunks; we accept that rather than duplicate the grouping.
- ann: index_search through HNSW (one SQL query per query, as the search API does), and we
  also compute the exact top k to report ANN's recall against exact search at 10 and at
  the evaluation's k (the share of the exact top 10 / top k that ANN's top 10 / k holds).

A retried job recomputes from scratch (an evaluation takes seconds to minutes) and replaces
the EvalRun it wrote before, so a retry never leaves two runs for one job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from django.db import transaction

from embedhub.core.errors import ApplicationError
from embedhub.corpora.models import Corpus
from embedhub.evaluation import selectors
from embedhub.evaluation.importing import query_set_import
from embedhub.evaluation.models import EvalRun, QuerySet
from embedhub.registry.models import ModelVersion
from embedhub.vectors import compensation as qdc
from embedhub.vectors import selectors as vector_selectors
from embedhub.vectors.models import VectorIndex
from workers.ml.metrics import evaluate_run
from workers.ml.search import TopK

# Queries searched together; an exact batch is one pass over the index's vectors.
QUERY_BATCH = 2048
# Queries encoded between two progress reports, each a cancel point: encoding dominates a
# CPU evaluation (1,406 ArguAna queries take about a minute), and a cancel must not wait
# for all of it.
ENCODE_CHUNK = 256
MAX_K = 1000
SEARCHABLE = (VectorIndex.State.READY, VectorIndex.State.RETIRED)


# ------------------------------------------------------------------ query sets


def query_set_create(
    *, owner, corpus: Corpus, name: str, queries_file, qrels_file, skip_invalid: bool = False
) -> tuple[QuerySet, dict]:
    """Import BEIR queries + qrels as the query set `name` of `corpus` (replacing one of the
    same name). Returns (query set, import report with counts and skipped lines)."""
    report = query_set_import(
        owner=owner,
        corpus=corpus,
        name=name,
        queries_path=queries_file,
        qrels_path=qrels_file,
        skip_invalid=skip_invalid,
    )
    return QuerySet.objects.get(pk=report["query_set_id"]), report


# ------------------------------------------------------------------ the evaluate job


def compensation_check(*, index: VectorIndex, version: ModelVersion, compensation: str) -> None:
    # Fail at submission, not minutes later in the worker, when the versions are unrelated
    # or QDC / the adapter is asked for without the drift vectors / adapters it needs.
    if compensation not in qdc.COMPENSATIONS:
        raise ApplicationError(
            f"compensation: must be one of {list(qdc.COMPENSATIONS)}, not {compensation!r}",
            details={"field": "compensation"},
        )
    path = qdc.drift_path(query_version=version, index_version=index.model_version)
    qdc.compensation_path_check(path=path, compensation=compensation, index=index)


def evaluate_job_run(*, job, ctx) -> dict:
    p = job.params
    index = VectorIndex.objects.select_related("model_version", "corpus").get(pk=p["index"])
    run = evaluation_run(
        owner=job.owner,
        job=job,
        ctx=ctx,
        index=index,
        query_set=QuerySet.objects.get(pk=p["query_set"]),
        model_version=ModelVersion.objects.get(pk=p["model_version"]),
        compensation=p["compensation"],
        mode=p["mode"],
        k=p["k"],
        ef_search=p.get("ef_search"),
        exclude_self=p["exclude_self"],
    )
    return {
        "eval_run": run.pk,
        "metrics": run.metrics,
        "n_queries": run.n_queries,
        "skipped_unjudged": run.params["skipped_unjudged"],
        "compensation": run.compensation,
        "runtime": run.params["runtime"],
        "mode": run.mode,
        "ann_recall_at_10": run.ann_recall_at_10,
        "ann_recall_at_k": run.ann_recall_at_k,
        "k": run.params["k"],
        "seconds": run.seconds,
        "timings": run.timings,
    }


@dataclass
class _Searcher:
    """Retrieves rankings ({document external id: score}) for a batch of queries."""

    index: VectorIndex
    ef_search: int | None
    exclude_self: bool

    @property
    def numpy_exact(self) -> bool:
        return self.index.chunking == VectorIndex.Chunking.TRUNCATE

    def rankings(self, qids: list[str], vectors: np.ndarray, *, k: int, exact: bool) -> list[dict]:
        if exact and self.numpy_exact:
            return self._numpy(qids, vectors, k=k)
        return self._sql(qids, vectors, k=k, exact=exact)

    def _numpy(self, qids: list[str], vectors: np.ndarray, *, k: int) -> list[dict]:
        exclude = None
        if self.exclude_self:
            own = vector_selectors.document_ids_by_external_id(
                corpus_id=self.index.corpus_id, external_ids=qids
            )
            exclude = [{own[q]} if q in own else set() for q in qids]
        top = TopK(vectors, k=k, exclude=exclude)
        for doc_ids, block in vector_selectors.index_vector_blocks(index=self.index):
            top.add(block, doc_ids)
        doc_ids, scores = top.result()
        names = vector_selectors.document_external_ids(
            document_ids=np.unique(doc_ids[doc_ids >= 0])
        )
        # A document deleted since its vector was read has no name left: it is not ranked.
        return [
            {names[j]: float(s) for j, s in zip(row.tolist(), sc, strict=True) if j in names}
            for row, sc in zip(doc_ids, scores, strict=True)
        ]

    def _sql(self, qids: list[str], vectors: np.ndarray, *, k: int, exact: bool) -> list[dict]:
        # One extra hit so that dropping the query's own document still leaves k.
        depth = k + 1 if self.exclude_self else k
        hits = vector_selectors.index_search(
            index=self.index,
            query_vectors=vectors,
            k=depth,
            exact=exact,
            ef_search=None if exact else self.ef_search,
        )
        out = []
        for qid, query_hits in zip(qids, hits, strict=True):
            kept = [h for h in query_hits if not (self.exclude_self and h.external_id == qid)]
            out.append({h.external_id: h.score for h in kept[:k]})
        return out


def _top(ranking: dict, depth: int) -> set:
    return set(sorted(ranking, key=ranking.get, reverse=True)[:depth])


def _overlap(approx: dict, exact: dict, *, depth: int) -> float:
    reference = _top(exact, depth)
    return len(_top(approx, depth) & reference) / len(reference) if reference else 1.0


def evaluation_run(
    *,
    owner,
    index: VectorIndex,
    query_set: QuerySet,
    model_version: ModelVersion | None = None,
    compensation: str = "auto",
    mode: str = EvalRun.Mode.EXACT,
    k: int = 100,
    ef_search: int | None = None,
    exclude_self: bool | None = None,
    ctx=None,
    job=None,
) -> EvalRun:
    """Evaluate `index` on `query_set` and store the EvalRun (see the module docstring).
    `exclude_self` None follows the corpus's setting."""
    if index.state not in SEARCHABLE:
        raise ApplicationError(f"index {index.pk} is {index.state}, not searchable")
    if exclude_self is None:
        exclude_self = vector_selectors.corpus_excludes_self(corpus_id=index.corpus_id)
    started = time.monotonic()
    version = model_version or index.model_version
    qrels = selectors.query_set_qrels(query_set=query_set)
    queries = selectors.query_set_queries(query_set=query_set)
    judged = [(qid, text) for qid, text in queries if qid in qrels]
    report = _progress(ctx, total=len(judged), mode=mode)
    report(0, "searching")
    searcher = _Searcher(index=index, ef_search=ef_search, exclude_self=exclude_self)
    timings = {"load": time.monotonic() - started, "encode": 0.0, "search": 0.0, "reference": 0.0}
    run: dict[str, dict[str, float]] = {}
    overlaps: dict[int, list[float]] = {10: [], k: []}
    applied, adapter_scope = "none", None
    for start in range(0, len(judged), QUERY_BATCH):
        batch = judged[start : start + QUERY_BATCH]
        qids = [qid for qid, _ in batch]
        t0 = time.monotonic()
        vectors, info = _queries_encode(
            index=index,
            texts=[text for _, text in batch],
            version=version,
            compensation=compensation,
            report=lambda n, start=start: report(start + n, f"encoded {start + n}/{len(judged)}"),
        )
        applied, adapter_scope = info["compensation"], info["adapter"]
        t1 = time.monotonic()
        rankings = searcher.rankings(qids, vectors, k=k, exact=mode == EvalRun.Mode.EXACT)
        t2 = time.monotonic()
        if mode == EvalRun.Mode.ANN:
            reference = searcher.rankings(qids, vectors, k=k, exact=True)
            _overlaps_add(overlaps, rankings, reference, k=k)
        timings["encode"] += t1 - t0
        timings["search"] += t2 - t1
        timings["reference"] += time.monotonic() - t2
        run.update(zip(qids, rankings, strict=True))
        report(start + len(batch), f"encoded and searched {start + len(batch)}/{len(judged)}")
    t0 = time.monotonic()
    result = evaluate_run(qrels=qrels, run=run)
    timings["metrics"] = time.monotonic() - t0
    return _eval_run_save(
        owner=owner,
        job=job,
        index=index,
        query_set=query_set,
        model_version=version,
        compensation=applied,
        mode=mode,
        result=result,
        ann_recall={depth: float(np.mean(o)) if o else None for depth, o in overlaps.items()},
        seconds=time.monotonic() - started,
        timings=timings,
        params={
            "k": k,
            "ef_search": ef_search,
            "exclude_self": exclude_self,
            "compensation_requested": compensation,
            # Which adapters answered: "corpus", "version" or "corpus+version" (its hops).
            "adapter": adapter_scope,
            "skipped_unjudged": len(queries) - len(judged),
            # What encoded the queries (and the index's documents): the index's runtime.
            "runtime": index.runtime,
        },
    )


def _queries_encode(
    *, index, texts: list[str], version, compensation: str, report
) -> tuple[np.ndarray, dict]:
    """qdc.query_vectors in chunks of ENCODE_CHUNK, reporting (a cancel point) after each."""
    parts, info = [], {}
    for start in range(0, len(texts), ENCODE_CHUNK):
        vectors, info = qdc.query_vectors(
            index=index,
            texts=texts[start : start + ENCODE_CHUNK],
            model_version=version,
            compensation=compensation,
        )
        parts.append(vectors)
        report(start + len(vectors))
    return np.concatenate(parts), info


def _overlaps_add(overlaps: dict, rankings: list, reference: list, *, k: int) -> None:
    """ANN's recall against exact at 10 (over the top k when k < 10) and at k, per query."""
    for approx, exact in zip(rankings, reference, strict=True):
        for depth in overlaps:
            overlaps[depth].append(_overlap(approx, exact, depth=min(depth, k)))


def _progress(ctx, *, total: int, mode: str):
    def report(done: int, note: str) -> None:
        if ctx is not None:
            # at_least: a resumed attempt starts its queries over (an evaluation keeps no
            # checkpoint), and the bar must not jump back to 0 while it catches up.
            note = f"{note} ({mode})"
            ctx.progress(done, total=total, unit="queries", note=note, at_least=True)

    return report


def _eval_run_save(
    *,
    owner,
    job,
    index,
    query_set,
    model_version,
    compensation,
    mode,
    result,
    ann_recall,
    seconds,
    timings,
    params,
) -> EvalRun:
    fields = {
        "owner": owner,
        "query_set": query_set,
        "index": index,
        "model_version": model_version,
        "compensation": compensation,
        "mode": mode,
        "metrics": result.aggregate,
        "per_query": result.per_query,
        "n_queries": result.n_queries,
        "ann_recall_at_10": ann_recall[10],
        "ann_recall_at_k": ann_recall[params["k"]],
        "seconds": round(seconds, 3),
        "timings": {name: round(value, 3) for name, value in timings.items()},
        "params": params,
    }
    with transaction.atomic():
        if job is not None:
            EvalRun.objects.filter(job=job).delete()
        return EvalRun.objects.create(job=job, **fields)
