"""Periodic reindexing and index retention, scheduled with django-celery-beat.

Create or edit the schedules in the Django admin (Periodic Tasks). The vectors app's
migration 0002 adds disabled examples; copy one, set its kwargs (JSON), enable it.

- embedhub.reindex_corpus, kwargs:
    {"corpus_id": 12}                          newest version of the active index's model
    {"corpus_id": 12, "only_gated": true}      ... that passed a reindex gate
    {"corpus_id": 12, "model_name": "all-MiniLM-L6-v2"}   newest version of another model
    {"corpus_id": 12, "model_version": 7}      exactly version id 7
    add "gate": {"query_set": 3, "tolerance": 0.01} to swap only if nDCG@10 holds up.
- embedhub.reindex_stale_corpora, kwargs: {} or {"only_gated": true}
- embedhub.serving_policy_corpora, kwargs: {"owner": "ann"} (each of ann's corpora with a
  judged query set; without owner, every account's), optional "corpus_id": 12 and
  "allow_reindex": false. One policy job per corpus, as its owner, never two at once.
- embedhub.drop_expired_indexes, no kwargs (retention: EMBEDHUB_INDEX_RETENTION_DAYS).

Both reindex tasks take "owner": "<username>" to act for one account: then they only
touch corpora that account may manage (staff: every corpus).

Jobs are submitted as the corpus's owner, so a corpus only moves to versions its owner may
see ("only_gated": that passed a gate on this corpus), and never twice for one corpus:
while a reindex is queued or running, or the corpus is already on the target version, a
run does nothing. Corpora of deactivated accounts are left alone.
"""

from celery import shared_task

from embedhub.continual.selectors import (
    corpora_manageable,
    corpora_stale,
    corpora_with_judgements,
)
from embedhub.continual.services.policy import policy_schedule_submit
from embedhub.continual.services.reindex import indexes_drop_expired, reindex_schedule_submit


@shared_task(name="embedhub.reindex_corpus")
def reindex_corpus(
    corpus_id: int,
    model_name: str | None = None,
    model_version: int | None = None,
    only_gated: bool = False,
    gate: dict | None = None,
    owner: str | None = None,
) -> dict:
    """Reindex one corpus to the newest (gated) version, or to the named model/version."""
    corpus = corpora_manageable(owner=owner).filter(pk=corpus_id).first()
    if corpus is None:
        return {"corpus": corpus_id, "job": None, "outcome": "no such corpus to manage"}
    job, outcome = reindex_schedule_submit(
        corpus=corpus,
        model_version=model_version,
        model_name=model_name,
        only_gated=only_gated,
        gate=gate,
    )
    return {"corpus": corpus_id, "job": job.pk if job else None, "outcome": outcome}


@shared_task(name="embedhub.reindex_stale_corpora")
def reindex_stale_corpora(only_gated: bool = False, owner: str | None = None) -> list[dict]:
    """Reindex every manageable corpus whose active index is older than the newest version
    of its model that the corpus's owner may see."""
    results = []
    for corpus in corpora_stale(owner=owner, only_gated=only_gated):
        job, outcome = reindex_schedule_submit(corpus=corpus, only_gated=only_gated)
        results.append({"corpus": corpus.pk, "job": job.pk if job else None, "outcome": outcome})
    return results


@shared_task(name="embedhub.drop_expired_indexes")
def drop_expired_indexes() -> list[int]:
    """Drop retired indexes whose rollback window (INDEX_RETENTION_DAYS) is over."""
    return indexes_drop_expired()


@shared_task(name="embedhub.serving_policy_corpora")
def serving_policy_corpora(
    owner: str | None = None, corpus_id: int | None = None, allow_reindex: bool | None = None
) -> list[dict]:
    """Submit a policy job for each manageable corpus that has something to decide on."""
    corpora = corpora_manageable(owner=owner).filter(active_index__isnull=False)
    if corpus_id is not None:
        corpora = corpora.filter(pk=corpus_id)
    results = []
    for corpus in corpora.order_by("pk"):
        if not corpora_with_judgements(user=corpus.owner).filter(pk=corpus.pk).exists():
            continue
        job, outcome = policy_schedule_submit(corpus=corpus, allow_reindex=allow_reindex)
        results.append({"corpus": corpus.pk, "job": job.pk if job else None, "outcome": outcome})
    return results
