"""Reads on corpora, scoped to the user (staff see everything)."""

from __future__ import annotations

from django.db.models import Count, QuerySet

from embedhub.core.errors import NotFound
from embedhub.core.selectors import owned_by
from embedhub.corpora.models import Corpus, CorpusScreen, Document, QuarantineDecision


def corpus_list(*, user, name: str | None = None) -> QuerySet[Corpus]:
    qs = owned_by(Corpus.objects.all(), user=user).select_related("owner")
    if name:
        qs = qs.filter(name__icontains=name)
    # Meta.ordering is dropped from GROUP BY queries, so the order is spelled out.
    return qs.annotate(document_count=Count("documents")).order_by("-created_at", "-id")


def corpus_get(*, user, corpus_id: int) -> Corpus:
    """Another user's corpus is a 404, not a 403, so ids don't leak."""
    corpus = corpus_list(user=user).filter(pk=corpus_id).first()
    if corpus is None:
        raise NotFound(f"corpus {corpus_id} not found")
    return corpus


def document_list(*, corpus: Corpus, external_id: str | None = None) -> QuerySet[Document]:
    qs = corpus.documents.all()
    if external_id:
        qs = qs.filter(external_id=external_id)
    return qs


def document_get(*, corpus: Corpus, external_id: str) -> Document:
    document = corpus.documents.filter(external_id=external_id).first()
    if document is None:
        raise NotFound(f"document {external_id!r} is not in corpus {corpus.name!r}")
    return document


def quarantine_list(*, corpus: Corpus) -> QuerySet[Document]:
    """The corpus's quarantined documents, most suspicious first."""
    return corpus.documents.filter(quarantined=True).order_by("-screen_score", "id")


def quarantined_document_get(*, corpus: Corpus, document_id) -> Document:
    try:
        return quarantine_list(corpus=corpus).get(pk=int(document_id))
    except (Document.DoesNotExist, TypeError, ValueError):
        raise NotFound(f"no quarantined document {document_id} in corpus {corpus.pk}") from None


def quarantine_decisions(*, corpus: Corpus) -> QuerySet[QuarantineDecision]:
    return corpus.quarantine_log.select_related("decided_by")


def corpus_screen_get(*, corpus: Corpus) -> CorpusScreen | None:
    return CorpusScreen.objects.filter(corpus=corpus).defer("data").first()


def clean_document_ids(*, corpus_id: int, document_ids) -> list[int]:
    """Those of `document_ids` in the corpus that are not quarantined, in id order."""
    ids = [int(i) for i in document_ids]
    qs = Document.objects.filter(corpus_id=corpus_id, id__in=ids, quarantined=False)
    return list(qs.order_by("id").values_list("id", flat=True))
