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
from transformers import AutoTokenizer

from embedhub.audits import defence, selectors
from embedhub.audits.models import RobustnessAudit
from embedhub.core.errors import ApplicationError
from embedhub.jobs.services import JobCancelled, JobLost, job_heartbeat
from embedhub.vectors.compensation import query_vectors
from embedhub.vectors.models import VectorIndex
from embedhub.vectors.selectors import index_search, index_vector_blocks
from workers.ml.gaslite import (
    AttackConfig,
    Attacker,
    evaluate_passages,
    kmeans_targets,
    split_held_in_out,
)
from workers.ml.geometry import DocGeometry
from workers.ml.search import TopK

DEPTH = 100  # real rankings are read this deep; appeared@k is reported for k <= DEPTH
NON_CONCEPT_LIMIT = 200
CANCEL_CHECK_SECONDS = 2.0


# ------------------------------------------------------------------ checks at submission


@lru_cache(maxsize=2)
def _tokenizer(path: str):
    return AutoTokenizer.from_pretrained(path)


def passage_length_check(*, index: VectorIndex, message: str, trigger_len: int) -> None:
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
    adaptive = _adaptive(index=index, attacker=attacker, params=params)
    for i in range(len(audit.passages), params["budget"]):
        audit = audit_passage_attack(
            audit=audit, attacker=attacker, i=i, ctx=ctx, adaptive=adaptive
        )
    ctx.progress(
        params["budget"],
        total=params["budget"],
        unit="passages",
        note="evaluating passages against the index",
    )
    audit = audit_evaluate(audit=audit, attacker=attacker, index=index, load_seconds=load_seconds)
    return audit_summary(audit=audit)


def _adaptive(*, index: VectorIndex, attacker, params: dict) -> dict:
    """For an adaptive audit, what the attack is given against the screen: its naturalness
    penalty and the tokens that are words of the corpus (no symbols, no fragments)."""
    if not params.get("adaptive"):
        return {}
    screen = defence.attacker_screen(index=index, seed=params["seed"])
    knows = screen.language.knows
    return {
        "penalty": screen.naturalness_penalty,
        "vocabulary": attacker.vocabulary_mask(lambda tok: tok.isalnum() and knows(tok)),
    }


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
    params = audit.params
    held_in, held_out = split_held_in_out(queries, held_in=params["held_in"], seed=params["seed"])
    vecs, _ = query_vectors(index=index, texts=[q["text"] for q in held_in])
    targets = kmeans_targets(vecs, n=params["budget"], seed=params["seed"])
    audit.held_in, audit.held_out = held_in, held_out
    audit.targets = targets.astype(float).tolist()
    audit.save(update_fields=["held_in", "held_out", "targets", "updated_at"])
    return audit


def _attack_config(params: dict, *, i: int, spent: float) -> AttackConfig:
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
        naturalness_weight=params["naturalness_weight"] if params.get("adaptive") else 0.0,
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


def audit_passage_attack(
    *, audit: RobustnessAudit, attacker, i: int, ctx, adaptive: dict | None = None
) -> RobustnessAudit:
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
        **(adaptive or {}),
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
        "best_objective": result.best_objective,
        "objective_curve": result.objective_curve,
        "iterations_run": result.iterations_run,
        "seconds": result.seconds,
    }


# ------------------------------------------------------------------ evaluation


def _index_scan(
    *, index: VectorIndex, queries: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], DocGeometry]:
    """One pass over the index's chunk-0 vectors, streamed in blocks so the index never has
    to fit in memory: each query group's best DEPTH scores (exact), and the geometry."""
    tops = {name: TopK(vecs, k=DEPTH) for name, vecs in queries.items()}
    geometry = DocGeometry()
    for doc_ids, block in index_vector_blocks(index=index):
        for top in tops.values():
            top.add(block, doc_ids)
        geometry.add(block)
    return {name: top.result()[1] for name, top in tops.items()}, geometry


def _real_topk(
    *, index: VectorIndex, queries: np.ndarray, chunk0: np.ndarray, n_docs: int
) -> np.ndarray:
    """Each query's best DEPTH real scores, descending, found exactly (no HNSW blur)."""
    if index.chunking != VectorIndex.Chunking.CHUNK:
        return chunk0
    # Chunked: a document scores by its best chunk, which the exact SQL search resolves.
    depth = min(DEPTH, n_docs)
    hits = index_search(index=index, query_vectors=queries, k=depth, exact=True)
    return np.array([[h.score for h in row] + [-np.inf] * (depth - len(row)) for row in hits])


def _scored(*, passages: np.ndarray, queries: np.ndarray, topk: np.ndarray) -> dict:
    out = evaluate_passages(passage_vecs=passages, query_vecs=queries, topk_scores=topk)
    # The objective the attack maximised, seen from the judged queries.
    out["mean_best_cosine"] = float((queries @ np.atleast_2d(passages).T).max(axis=1).mean())
    return out


def _judge(*, queries: np.ndarray, topk: np.ndarray, refs: dict) -> dict:
    return {name: _scored(passages=vecs, queries=queries, topk=topk) for name, vecs in refs.items()}


def audit_evaluate(
    *, audit: RobustnessAudit, attacker, index: VectorIndex, load_seconds: float
) -> RobustnessAudit:
    """appeared@k on held-out (and held-in) queries for the passages embedded from their
    decoded text, the message alone, the centroids, and spill-over onto other queries."""
    started = time.monotonic()
    RobustnessAudit.objects.filter(pk=audit.pk).update(state=RobustnessAudit.State.EVALUATING)
    texts = {"held_out": [q["text"] for q in audit.held_out]}
    texts["held_in"] = [q["text"] for q in audit.held_in]
    other, source = _non_concept_texts(audit=audit, index=index)
    if other:
        texts["non_concept"] = other
    queries = {name: query_vectors(index=index, texts=t)[0] for name, t in texts.items()}
    chunk0, geometry = _index_scan(index=index, queries=queries)
    if not geometry.n_docs:
        raise ApplicationError(f"index {index.pk} holds no vectors: embed its corpus first")
    topk = {
        name: _real_topk(index=index, queries=vecs, chunk0=chunk0[name], n_docs=geometry.n_docs)
        for name, vecs in queries.items()
    }
    refs = {
        "gaslite": attacker.embed_texts([p["text"] for p in audit.passages], kind="document"),
        "message_only": attacker.embed_texts([audit.message], kind="document"),
        "centroid": np.asarray(audit.targets, dtype=np.float32),
    }
    audit.results = {
        **_judge(queries=queries["held_out"], topk=topk["held_out"], refs=refs),
        "held_in": _judge(queries=queries["held_in"], topk=topk["held_in"], refs=refs),
        "non_concept": _non_concept(queries=queries, topk=topk, refs=refs, source=source),
        "depth": int(topk["held_out"].shape[1]),
    }
    audit.results["defence"] = _defence(
        audit=audit, index=index, refs=refs, queries=queries, topk=topk
    )
    audit.geometry = _geometry(
        geometry=geometry, queries=queries["held_out"], topk=topk["held_out"], chunk0=chunk0
    )
    return _complete(
        audit=audit,
        load_seconds=load_seconds,
        evaluate=time.monotonic() - started,
        device=str(attacker.device),
    )


def _defence(*, audit: RobustnessAudit, index: VectorIndex, refs: dict, queries, topk) -> dict:
    """The detectors' side (audits/defence.py): the defender knows every query but the
    held-out ones."""
    known = [name for name in ("held_in", "non_concept") if name in queries]
    return defence.audit_defence(
        index=index,
        seed=audit.params["seed"],
        refs={"gaslite": refs["gaslite"], "message_only": refs["message_only"]},
        texts={"gaslite": [p["text"] for p in audit.passages], "message_only": [audit.message]},
        known=(
            np.concatenate([queries[n] for n in known]),
            np.concatenate([_depth(topk[n], 10) for n in known]),
        ),
        held_out=(queries["held_out"], topk["held_out"]),
    )


def _depth(topk: np.ndarray, k: int) -> np.ndarray:
    # Query groups may have been read to different depths; the defence needs the first k.
    k = min(k, topk.shape[1])
    return np.asarray(topk)[:, :k]


def _geometry(*, geometry: DocGeometry, queries, topk: np.ndarray, chunk0: dict) -> dict:
    # The 10th-neighbour bar from the real rankings; an index of fewer than 10 documents
    # has no 10th neighbour, so its worst chunk-0 score stands in (as geometry_report's).
    if topk.shape[1] >= 10:
        tenth = topk[:, 9]
    else:
        tenth = chunk0["held_out"][:, min(10, geometry.n_docs) - 1]
    return geometry.report(query_vecs=queries, tenth=np.asarray(tenth, dtype=np.float64))


def _non_concept_texts(*, audit: RobustnessAudit, index) -> tuple[list[str], str]:
    concept = {q["text"] for q in audit.held_in + audit.held_out}
    return selectors.non_concept_queries(
        user=audit.owner,
        corpus_id=index.corpus_id,
        query_set_id=audit.query_set_id,
        exclude_texts=concept,
        limit=NON_CONCEPT_LIMIT,
        seed=audit.params["seed"],
    )


def _non_concept(*, queries: dict, topk: dict, refs: dict, source: str) -> dict:
    if "non_concept" not in queries:
        return {"available": False, "source": source, "n_queries": 0}
    judged = _judge(
        queries=queries["non_concept"], topk=topk["non_concept"], refs={"gaslite": refs["gaslite"]}
    )
    return {"available": True, "source": source, **judged["gaslite"]}


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
        **selectors.defence_headline(results),
        "seconds": audit.seconds,
    }
