"""Reads on corpora, scoped to the user (staff see everything)."""

from __future__ import annotations

from django.db.models import Count, QuerySet

from embedhub.core.errors import NotFound
from embedhub.core.selectors import owned_by
from embedhub.corpora.models import Corpus, Document


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
