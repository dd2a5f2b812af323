"""The `audit` job: GASLITE adversarial passages against one index, for one concept.

Prepare resolves and checks everything a user can get wrong before a job exists. Run embeds
the concept's queries with the index's model version, splits them held-in / held-out
(seeded), k-means the held-in ones into one target per passage, attacks each target, and
then judges the passages from their decoded text against the index's real rankings for the
held-out queries. Passages are stored on the RobustnessAudit row only: nothing is written
to the corpus or the index.
"""

from __future__ import annotations

import time
from functools import lru_cache

import numpy as np
from django.db import IntegrityError, transaction
from django.utils import timezone

from embedhub.audits import selectors
from embedhub.audits.models import RobustnessAudit
from embedhub.core.errors import ApplicationError
from embedhub.jobs.services import JobCancelled, JobLost, job_heartbeat
from embedhub.vectors.compensation import query_vectors
from embedhub.vectors.models import VectorIndex
from embedhub.vectors.selectors import index_for_search, index_search, index_vectors

MIN_QUERIES = 4
DEPTH = 100  # real rankings are read this deep; appeared@k is reported for k <= DEPTH
NON_CONCEPT_LIMIT = 200
CANCEL_CHECK_SECONDS = 2.0

# name -> (default, lowest, highest); None as default means "not set".
INT_PARAMS = {
    "budget": (10, 1, 50),
    "trigger_len": (30, 1, 200),
    "iterations": (30, 0, 1000),
    "candidates": (32, 1, 512),
    "positions": (10, 1, 200),
    "grad_copies": (10, 1, 256),
    "seed": (0, 0, 2**31 - 1),
}


# ------------------------------------------------------------------ prepare (at submit)


def audit_job_prepare(*, user, params: dict) -> tuple[dict, object]:
    """Check and normalise an audit's params; the concept's queries are resolved now, so the
    job attacks exactly what the user saw accepted even if the query set changes later."""
    index = _audit_index(user=user, params=params)
    queries, query_set = _concept(user=user, params=params)
    numbers = _numbers(params)
    held_in = _fraction(params.get("held_in", 0.5), name="held_in", lo=0.1, hi=0.9)
    _check_split(n=len(queries), held_in=held_in, budget=numbers["budget"])
    message = _text(params.get("message"), name="message", limit=2000)
    _check_passage_length(index=index, message=message, trigger_len=numbers["trigger_len"])
    if numbers["positions"] > numbers["trigger_len"]:
        raise ApplicationError(
            f"positions: {numbers['positions']} is more than trigger_len "
            f"({numbers['trigger_len']}); each iteration visits distinct trigger positions"
        )
    normalised = {
        "index": index.pk,
        "concept": _concept_name(params, query_set=query_set),
        "message": message,
        "queries": queries,
        "query_set": query_set.pk if query_set else None,
        "keyword": params.get("keyword") or None,
        **numbers,
        "held_in": held_in,
        "time_limit_s": _time_limit(params.get("time_limit_s")),
    }
    return normalised, index.corpus


def _audit_index(*, user, params: dict) -> VectorIndex:
    index = index_for_search(
        user=user, corpus_id=params.get("corpus"), index_id=params.get("index")
    )
    if index.encoder:
        raise ApplicationError(
            f"index {index.pk} was built with the {index.encoder!r} test encoder, not its model "
            "version: an attack on the real model would be judged in a different space; "
            "embed the corpus with the model version itself and audit that index",
            code="fake_encoder",
        )
    return index


def _concept(*, user, params: dict) -> tuple[list[dict], object]:
    inline, query_set_id = params.get("queries"), params.get("query_set")
    if inline is not None and query_set_id not in (None, ""):
        raise ApplicationError(
            "give the concept either as queries (inline) or as query_set, not both"
        )
    if inline is not None:
        return _inline_queries(inline), None
    if query_set_id in (None, ""):
        raise ApplicationError(
            "give the concept's queries: queries (a list of query texts), or query_set with "
            "keyword (a regular expression) or query_ids (a list of query ids)"
        )
    keyword, query_ids = params.get("keyword"), params.get("query_ids")
    if bool(keyword) == bool(query_ids):
        raise ApplicationError("with query_set, give exactly one of keyword or query_ids")
    if keyword is not None and not isinstance(keyword, str):
        raise ApplicationError("keyword: must be a string")
    if query_ids is not None and not isinstance(query_ids, list):
        raise ApplicationError("query_ids: must be a list of query ids")
    query_set = selectors.query_set_get(user=user, query_set_id=query_set_id)
    queries = selectors.concept_queries(query_set=query_set, keyword=keyword, query_ids=query_ids)
    return queries, query_set


def _inline_queries(raw) -> list[dict]:
    if not isinstance(raw, list) or not all(isinstance(q, str) for q in raw):
        raise ApplicationError("queries: must be a list of query texts (strings)")
    texts = list(dict.fromkeys(q.strip() for q in raw if q.strip()))
    if any(len(t) > 2000 for t in texts):
        raise ApplicationError("queries: each query must be at most 2000 characters")
    return [{"id": f"q{i}", "text": t} for i, t in enumerate(texts)]


def _int(value, *, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ApplicationError(f"{name}: must be an integer between {lo} and {hi}, got {value!r}")
    return value


def _numbers(params: dict) -> dict:
    return {
        name: _int(params.get(name, default), name=name, lo=lo, hi=hi)
        for name, (default, lo, hi) in INT_PARAMS.items()
    }


def _fraction(value, *, name: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ApplicationError(f"{name}: must be a number between {lo} and {hi}, got {value!r}")
    return float(value)


def _time_limit(value) -> float | None:
    if value is None:
        return None
    return _fraction(value, name="time_limit_s", lo=1, hi=7 * 24 * 3600)


def _text(value, *, name: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ApplicationError(f"{name}: required, the adversary's text the passages carry")
    if len(value) > limit:
        raise ApplicationError(f"{name}: at most {limit} characters")
    return value.strip()


def _check_split(*, n: int, held_in: float, budget: int) -> None:
    if n < MIN_QUERIES:
        raise ApplicationError(
            f"the concept has {n} distinct queries; an audit needs at least {MIN_QUERIES} "
            "(some to attack with, some held out to judge the attack)",
            code="too_few_queries",
        )
    n_in = int(round(held_in * n))
    if n_in < 1 or n_in >= n:
        raise ApplicationError(
            f"held_in {held_in} of {n} queries leaves {n_in} held-in and {n - n_in} held-out; "
            "both must be at least 1"
        )
    if budget > n_in:
        raise ApplicationError(
            f"budget: {budget} passages but only {n_in} held-in queries (held_in {held_in} of "
            f"{n}); each passage targets a cluster of held-in queries, so lower the budget "
            "or add queries",
            code="budget_too_large",
        )


def _concept_name(params: dict, *, query_set) -> str:
    name = params.get("concept") or (params.get("keyword") if query_set else None)
    if not isinstance(name, str) or not name.strip():
        raise ApplicationError('concept: give the concept a name (e.g. "vitamin D")')
    if len(name) > 200:
        raise ApplicationError("concept: at most 200 characters")
    return name.strip()


@lru_cache(maxsize=2)
def _tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _check_passage_length(*, index: VectorIndex, message: str, trigger_len: int) -> None:
    version = index.model_version
    head = _tokenizer(version.artifact_path)(
        version.document_prefix + message + ".", add_special_tokens=False
    )["input_ids"]
    total = len(head) + trigger_len + 2  # [CLS] and [SEP]
    if total > version.max_tokens:
        raise ApplicationError(
            f"the passage would be {total} tokens (message {len(head)} + trigger {trigger_len} "
            f"+ 2), over the model's {version.max_tokens}: shorten the message or trigger_len"
        )


# ------------------------------------------------------------------ run (in the worker)


@lru_cache(maxsize=1)
def _attacker(path: str):
    from workers.ml.gaslite import Attacker

    return Attacker.from_path(path)


def audit_job_run(*, job, ctx) -> dict:
    params = job.params
    index = VectorIndex.objects.select_related("model_version", "corpus").get(pk=params["index"])
    started = time.monotonic()
    audit = audit_for_job(job=job, index=index)
    attacker = _attacker(index.model_version.artifact_path)
    load_seconds = time.monotonic() - started
    if not audit.targets:
        ctx.progress(
            0,
            total=params["budget"],
            unit="passages",
            note="embedding the concept's queries and choosing targets",
        )
        audit = audit_targets_set(audit=audit, index=index, queries=params["queries"])
    for i in range(len(audit.passages), params["budget"]):
        audit = audit_passage_attack(audit=audit, attacker=attacker, i=i, ctx=ctx)
    ctx.progress(
        params["budget"],
        total=params["budget"],
        unit="passages",
        note="evaluating passages against the index",
    )
    audit = audit_evaluate(audit=audit, attacker=attacker, index=index, load_seconds=load_seconds)
    return audit_summary(audit=audit)


def audit_for_job(*, job, index: VectorIndex) -> RobustnessAudit:
    """The job's audit row, created on its first attempt and found again on a retry."""
    existing = RobustnessAudit.objects.filter(job=job).first()
    if existing:
        return existing
    params = job.params
    try:
        with transaction.atomic():
            return RobustnessAudit.objects.create(
                owner=job.owner,
                job=job,
                index=index,
                model_version=index.model_version,
                query_set_id=params.get("query_set"),
                concept=params["concept"],
                message=params["message"],
                params=_stored_params(params),
            )
    except IntegrityError:  # a duplicate delivery raced us to it
        return RobustnessAudit.objects.get(job=job)


def _stored_params(params: dict) -> dict:
    # The queries are stored split into held_in / held_out; keep the rest as submitted.
    return {k: v for k, v in params.items() if k != "queries"}


def audit_targets_set(
    *, audit: RobustnessAudit, index: VectorIndex, queries: list[dict]
) -> RobustnessAudit:
    """Split the concept (seeded), embed the held-in queries as the platform embeds queries
    for this index, and fix one k-means centroid per passage."""
    from workers.ml.gaslite import kmeans_targets, split_held_in_out

    params = audit.params
    held_in, held_out = split_held_in_out(queries, held_in=params["held_in"], seed=params["seed"])
    vecs, _ = query_vectors(index=index, texts=[q["text"] for q in held_in])
    targets = kmeans_targets(vecs, n=params["budget"], seed=params["seed"])
    audit.held_in, audit.held_out = held_in, held_out
    audit.targets = targets.astype(float).tolist()
    audit.save(update_fields=["held_in", "held_out", "targets", "updated_at"])
    return audit


def _attack_config(params: dict, *, i: int, spent: float):
    from workers.ml.gaslite import AttackConfig

    limit = params.get("time_limit_s")
    remaining = params["budget"] - i
    return AttackConfig(
        trigger_len=params["trigger_len"],
        iterations=params["iterations"],
        positions_per_iter=params["positions"],
        n_candidates=params["candidates"],
        grad_copies=params["grad_copies"],
        # The total limit is shared by the passages still to do, whatever earlier ones used.
        time_limit_s=None if limit is None else max(limit - spent, 0.0) / remaining,
        seed=params["seed"] + i,  # distinct passages differ in their random choices too
    )


class _CancelWatch:
    """should_stop for the attack: asks Postgres at most every few seconds whether the job
    was cancelled (or taken over), so a long iteration still stops promptly."""

    def __init__(self, ctx):
        self.ctx, self.stopped, self._last = ctx, False, time.monotonic()

    def __call__(self) -> bool:
        if not self.stopped and time.monotonic() - self._last >= CANCEL_CHECK_SECONDS:
            self._last = time.monotonic()
            try:
                self.ctx.check_cancel()
            except (JobCancelled, JobLost):
                self.stopped = True
        return self.stopped


def audit_passage_attack(*, audit: RobustnessAudit, attacker, i: int, ctx) -> RobustnessAudit:
    """Optimise passage i and store it; a cancel mid-passage discards the unfinished one."""
    params = audit.params
    n = params["budget"]
    spent = sum(p["seconds"] for p in audit.passages)

    def on_iteration(it: int, best: float) -> None:
        ctx.progress(
            i,
            total=n,
            unit="passages",
            note=f"passage {i + 1}/{n}, iteration "
            f"{it + 1}/{params['iterations']}, best cos {best:.3f}",
        )

    watch = _CancelWatch(ctx)
    result = attacker.attack(
        target=np.asarray(audit.targets[i], dtype=np.float32),
        message=audit.message,
        config=_attack_config(params, i=i, spent=spent),
        on_iteration=on_iteration,
        should_stop=watch,
    )
    if watch.stopped:
        ctx.check_cancel()  # raises JobCancelled / JobLost: the partial passage is not kept
    # Saved before the checkpoint: if the progress call finds a cancel, the passage is kept.
    audit = audit_passage_store(audit=audit, job=ctx.job, passage=_passage_record(result, i=i))
    ctx.progress(
        i + 1,
        total=n,
        unit="passages",
        note=f"passage {i + 1}/{n} done, cos "
        f"{result.initial_cosine:.3f} -> {result.best_cosine:.3f}",
        checkpoint={"audit": audit.pk, "passages_done": i + 1},
    )
    return audit


def audit_passage_store(*, audit: RobustnessAudit, job, passage: dict) -> RobustnessAudit:
    """Append passage i, but only while this worker still owns the job and nobody stored
    passage i already: a worker presumed dead must not interleave with its replacement."""
    with transaction.atomic():
        current = RobustnessAudit.objects.select_for_update().get(pk=audit.pk)
        if len(current.passages) != passage["target"] or not job_heartbeat(job=job):
            raise JobLost(f"job {job.pk}: passage {passage['target']} is no longer ours to store")
        current.passages = [*current.passages, passage]
        current.save(update_fields=["passages", "updated_at"])
    return current


def _passage_record(result, *, i: int) -> dict:
    return {
        "target": i,
        "text": result.text,
        "token_ids": result.token_ids,
        "trigger_ids": result.trigger_ids,
        "initial_cosine": result.initial_cosine,
        "best_cosine": result.best_cosine,
        "objective_curve": result.objective_curve,
        "iterations_run": result.iterations_run,
        "seconds": result.seconds,
    }


# ------------------------------------------------------------------ evaluation


def _real_topk(*, index: VectorIndex, queries: np.ndarray, doc_vecs: np.ndarray) -> np.ndarray:
    """Each query's best DEPTH real scores, descending, found exactly (no HNSW blur)."""
    from workers.ml.search import topk_cosine

    if index.chunking != VectorIndex.Chunking.CHUNK:
        return topk_cosine(queries, doc_vecs, k=DEPTH)[1]
    # Chunked: a document scores by its best chunk, which the exact SQL search resolves.
    depth = min(DEPTH, len(doc_vecs))
    hits = index_search(index=index, query_vectors=queries, k=depth, exact=True)
    return np.array([[h.score for h in row] + [-np.inf] * (depth - len(row)) for row in hits])


def _scored(*, passages: np.ndarray, queries: np.ndarray, topk: np.ndarray) -> dict:
    from workers.ml.gaslite import evaluate_passages

    out = evaluate_passages(passage_vecs=passages, query_vecs=queries, topk_scores=topk)
    # The objective the attack maximised, seen from the judged queries.
    out["mean_best_cosine"] = float((queries @ np.atleast_2d(passages).T).max(axis=1).mean())
    return out


def _judge(*, index, doc_vecs, texts: list[str], refs: dict) -> dict:
    queries, _ = query_vectors(index=index, texts=texts)
    topk = _real_topk(index=index, queries=queries, doc_vecs=doc_vecs)
    scores = {
        name: _scored(passages=vecs, queries=queries, topk=topk) for name, vecs in refs.items()
    }
    return {"queries": queries, "topk": topk, "scores": scores}


def audit_evaluate(
    *, audit: RobustnessAudit, attacker, index: VectorIndex, load_seconds: float
) -> RobustnessAudit:
    """appeared@k on held-out (and held-in) queries for the passages embedded from their
    decoded text, the message alone, the centroids, and spill-over onto other queries."""
    from workers.ml.geometry import geometry_report

    started = time.monotonic()
    RobustnessAudit.objects.filter(pk=audit.pk).update(state=RobustnessAudit.State.EVALUATING)
    _, _, doc_vecs = index_vectors(index=index)
    if not len(doc_vecs):
        raise ApplicationError(f"index {index.pk} holds no vectors: embed its corpus first")
    refs = {
        "gaslite": attacker.embed_texts([p["text"] for p in audit.passages], kind="document"),
        "message_only": attacker.embed_texts([audit.message], kind="document"),
        "centroid": np.asarray(audit.targets, dtype=np.float32),
    }
    out = _judge(
        index=index, doc_vecs=doc_vecs, texts=[q["text"] for q in audit.held_out], refs=refs
    )
    held_in = _judge(
        index=index, doc_vecs=doc_vecs, texts=[q["text"] for q in audit.held_in], refs=refs
    )
    audit.results = {
        **out["scores"],
        "held_in": held_in["scores"],
        "non_concept": _non_concept(audit=audit, index=index, doc_vecs=doc_vecs, refs=refs),
        "depth": int(out["topk"].shape[1]),
    }
    enough = out["topk"].shape[1] >= 10
    audit.geometry = geometry_report(
        doc_vecs=doc_vecs,
        query_vecs=out["queries"],
        topk_scores=out["topk"] if enough else None,
        seed=audit.params["seed"],
    )
    return _complete(
        audit=audit,
        load_seconds=load_seconds,
        evaluate=time.monotonic() - started,
        device=str(attacker.device),
    )


def _non_concept(*, audit: RobustnessAudit, index, doc_vecs, refs: dict) -> dict:
    concept = {q["text"] for q in audit.held_in + audit.held_out}
    texts, source = selectors.non_concept_queries(
        user=audit.owner,
        corpus_id=index.corpus_id,
        query_set_id=audit.query_set_id,
        exclude_texts=concept,
        limit=NON_CONCEPT_LIMIT,
        seed=audit.params["seed"],
    )
    if not texts:
        return {"available": False, "source": source, "n_queries": 0}
    judged = _judge(index=index, doc_vecs=doc_vecs, texts=texts, refs={"gaslite": refs["gaslite"]})[
        "scores"
    ]["gaslite"]
    return {"available": True, "source": source, **judged}


def _complete(
    *, audit: RobustnessAudit, load_seconds: float, evaluate: float, device: str
) -> RobustnessAudit:
    attack = sum(p["seconds"] for p in audit.passages)
    audit.timings = {
        "load_seconds_last_attempt": round(load_seconds, 3),
        "attack_seconds": round(attack, 3),
        "evaluate_seconds": round(evaluate, 3),
        "per_passage_seconds": [round(p["seconds"], 3) for p in audit.passages],
        "device": device,
    }
    audit.seconds = round(load_seconds + attack + evaluate, 3)
    audit.state = RobustnessAudit.State.COMPLETE
    audit.completed_at = timezone.now()
    audit.save(
        update_fields=[
            "results",
            "geometry",
            "timings",
            "seconds",
            "state",
            "completed_at",
            "updated_at",
        ]
    )
    return audit


def audit_summary(*, audit: RobustnessAudit) -> dict:
    """The job's result: where to find the audit and its headline numbers."""
    results = audit.results
    return {
        "audit": audit.pk,
        "concept": audit.concept,
        "passages": len(audit.passages),
        "held_out": len(audit.held_out),
        **{
            f"{ref}_{selectors.HEADLINE}": (results.get(ref) or {}).get(selectors.HEADLINE)
            for ref in selectors.REFERENCES
        },
        "seconds": audit.seconds,
    }
