"""Hubness screening at index build: the documents a screened corpus's ingest scored are
scored by hubness against the corpus's known queries once their vectors are written, and
those too many queries would rank in their top 10 are quarantined (never dropped), unless
their owner approved them."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from django.utils import timezone

from embedhub.corpora import screening
from embedhub.corpora.models import Document
from embedhub.evaluation.models import Query, QuerySet
from embedhub.vectors import hub_screen, selectors, services, tables
from embedhub.vectors.models import VectorIndex
from tests.factories import CorpusFactory, ModelVersionFactory
from tests.screening_texts import clean_documents
from workers.ml.encoder import FakeEncoder

pytestmark = pytest.mark.django_db

# Questions the corpus's abstracts do not answer: a passage built for them is near all of
# them while every real document is far, the situation GASLITE exploits.
QUERIES = [
    "Which planet is the largest?",
    "How does yeast make bread rise?",
    "Who painted the Mona Lisa?",
    "How do bees make honey?",
    "What is the capital of Australia?",
    "How fast does light travel?",
    "Why is the sky blue?",
    "How do volcanoes erupt?",
    "What causes ocean tides?",
    "How do airplanes stay in the air?",
    "Does vitamin D supplementation lower the risk of hip fracture?",
    "Is statin therapy linked to cardiovascular mortality?",
]


class _Ctx:
    """The job context index_build reports through; records the notes."""

    checkpoint: dict = {}

    def __init__(self):
        self.notes: list[str] = []

    def progress(self, done, **kwargs) -> None:
        self.notes.append(kwargs.get("note", ""))

    def check_cancel(self) -> None:
        pass


def _doc(corpus, external_id: str, text: str, *, screened: bool) -> Document:
    # screened: as the ingest screen leaves a document it let through.
    extra = {"screen_score": 0.5, "screen_features": {"oov_share": 0.1}} if screened else {}
    return Document.objects.create(
        corpus=corpus,
        external_id=external_id,
        text=text,
        content_hash=hashlib.sha256(text.encode()).hexdigest(),
        **extra,
    )


def _queries(corpus, texts: list[str], name: str = "test") -> QuerySet:
    query_set = QuerySet.objects.create(owner=corpus.owner, corpus=corpus, name=name)
    Query.objects.bulk_create(
        Query(query_set=query_set, external_id=f"q{i}", text=t) for i, t in enumerate(texts)
    )
    return query_set


@pytest.fixture
def screened_corpus(user):
    """Screening on; 200 documents imported before the screen existed (the clean
    reference), then 20 new ones the ingest screen let through and one hub candidate."""
    corpus = CorpusFactory(owner=user, name="hub")
    for i, text in enumerate(clean_documents(200)):
        _doc(corpus, f"c{i}", text, screened=False)
    for i, text in enumerate(clean_documents(20, seed=99)):
        _doc(corpus, f"n{i}", text, screened=True)
    _doc(corpus, "hub", "Visit BestShoes.com for cheap running shoes", screened=True)
    return screening.corpus_screening_update(corpus=corpus, enabled=True, fpr=0.01)


def _fake_index(user, corpus) -> VectorIndex:
    return services.index_create(
        owner=user, corpus=corpus, model_version=ModelVersionFactory(), encoder="fake:64"
    )


def _plant_hub(index: VectorIndex, texts: list[str]) -> None:
    """Write the hub document's vector ahead of the build: the normalised centroid of the
    known queries (the fake encoder's vectors have no sense a text could be built for).
    Its hash is the document's, so the build keeps it."""
    doc = Document.objects.get(corpus_id=index.corpus_id, external_id="hub")
    centroid = FakeEncoder(dimension=64).encode(texts, kind="query").mean(axis=0)
    tables.rows_replace(
        table=index.table_name,
        storage=index.storage,
        doc_ids=[doc.pk],
        chunks=[0],
        hashes=[doc.content_hash],
        vectors=(centroid / np.linalg.norm(centroid))[None, :],
    )


def _build(index: VectorIndex, ctx=None, **kwargs) -> dict:
    return services.index_build(index=index, ctx=ctx or _Ctx(), **kwargs)


def _held(corpus) -> set[str]:
    return set(
        Document.objects.filter(corpus=corpus, quarantined=True).values_list(
            "external_id", flat=True
        )
    )


def test_a_hub_among_the_new_documents_is_quarantined_at_build_and_clean_ones_are_not(
    user, screened_corpus
):
    corpus = screened_corpus
    _queries(corpus, QUERIES[:8])
    index = _fake_index(user, corpus)
    _plant_hub(index, QUERIES[:8])
    ctx = _Ctx()
    result = _build(index, ctx)

    report = result["screening"]
    assert report["skipped"] == "" and report["feature"] == "hubness"
    assert report["screened"] == 21  # the new documents; the 200 old ones are the reference
    assert report["quarantined_ids"] == ["hub"] and report["quarantined"] == 1
    assert report["known_queries"] == 8 and report["clean_documents"] == 200
    assert report["k"] == 10 and report["threshold"] >= 0
    assert any(note.startswith("screening 21 documents by hubness") for note in ctx.notes)
    assert result["documents"] == 221  # nothing dropped
    assert _held(corpus) == {"hub"}

    hub = Document.objects.get(corpus=corpus, external_id="hub")
    assert hub.screen_features["hubness"] > report["threshold"]
    assert hub.screen_features["oov_share"] == 0.1  # the ingest's features are kept
    assert hub.screen_features[screening.HUBNESS_INDEX] == index.pk
    assert hub.screen_score > 0.5  # now its hubness robust z
    new = Document.objects.get(corpus=corpus, external_id="n0")
    assert new.screen_features["hubness"] <= report["threshold"] and new.screen_score == 0.5
    assert not Document.objects.filter(
        corpus=corpus, screen_features__isnull=False, external_id__startswith="c"
    ).exists()
    # Out of search at once: the hub is not found even by the queries it was built for.
    query = FakeEncoder(dimension=64).encode(QUERIES[:1], kind="query")
    found = selectors.index_search(index=index, query_vectors=query, k=10, exact=True)[0]
    assert "hub" not in {h.external_id for h in found}

    # The same index again: nothing left to score, and the quarantine stays as it was.
    again = _build(index)
    assert again["screening"]["screened"] == 0 and "awaits" in again["screening"]["skipped"]
    assert _held(corpus) == {"hub"}


def _approved_hub(user, corpus):
    """(the index, the hub document): an index whose build quarantined a planted hub, which
    its owner then approved."""
    _queries(corpus, QUERIES[:8])
    index = _fake_index(user, corpus)
    _plant_hub(index, QUERIES[:8])
    _build(index)
    hub = Document.objects.get(corpus=corpus, external_id="hub")
    screening.document_quarantine_approve(document=hub, user=user)
    return index, hub


def test_a_document_its_owner_approved_is_not_quarantined_again_by_another_index(
    user, screened_corpus
):
    corpus = screened_corpus
    first, hub = _approved_hub(user, corpus)

    second = _fake_index(user, corpus)  # another index: every screened document again
    _plant_hub(second, QUERIES[:8])
    report = _build(second, activate=True)["screening"]
    assert report["screened"] == 21 and report["quarantined"] == 0
    assert report["over_bar_approved"] == 1
    hub.refresh_from_db()
    assert not hub.quarantined and hub.screen_features[screening.HUBNESS_INDEX] == second.pk


def test_another_index_keeps_the_documents_screened_before_as_its_clean_reference(
    user, screened_corpus
):
    corpus = screened_corpus
    _queries(corpus, QUERIES[:8])
    first = _fake_index(user, corpus)
    _plant_hub(first, QUERIES[:8])
    _build(first)
    assert _held(corpus) == {"hub"}

    second = _fake_index(user, corpus)
    _plant_hub(second, QUERIES[:8])
    report = _build(second, activate=True)["screening"]
    # The 20 documents that passed on the first index are reference, not left out of it.
    assert report["clean_documents"] == 220 and report["screened"] == 21
    assert report["quarantined"] == 0 and report["over_bar_already_quarantined"] == 1
    assert _held(corpus) == {"hub"}
    rescored = Document.objects.filter(corpus=corpus, external_id__startswith="n")
    assert {d.screen_features[screening.HUBNESS_INDEX] for d in rescored} == {second.pk}
    # Each one's hubness is its own count in the second index's top 10s (it is one of them).
    counts = [d.screen_features["hubness"] for d in rescored]
    assert sum(counts) > 0 and max(counts) <= report["threshold"]


def test_a_shadow_build_quarantines_nothing_and_its_activation_screens_it(user, screened_corpus):
    corpus = screened_corpus
    _queries(corpus, QUERIES[:8])
    live = _fake_index(user, corpus)  # no hub in its vectors: nothing held back
    assert _build(live)["screening"]["quarantined"] == 0
    shadow = _fake_index(user, corpus)
    _plant_hub(shadow, QUERIES[:8])

    report = _build(shadow, activate=False)["screening"]
    assert report["screened"] == 0 and "not active" in report["skipped"]
    assert _held(corpus) == set()
    assert not Document.objects.filter(
        corpus=corpus, screen_features__contains={screening.HUBNESS_INDEX: shadow.pk}
    ).exists()

    activated, report = services.index_activate_screened(index=shadow, ctx=_Ctx())
    corpus.refresh_from_db()
    assert corpus.active_index_id == activated.pk == shadow.pk
    assert report["screened"] == 21 and report["quarantined_ids"] == ["hub"]
    assert _held(corpus) == {"hub"}


def test_a_hand_rollback_swaps_at_once_and_the_next_build_screens_keeping_approvals(
    user, screened_corpus
):
    corpus = screened_corpus
    old, hub = _approved_hub(user, corpus)
    new = _fake_index(user, corpus)
    _build(new, activate=True)
    services.index_activate(index=old)  # the rollback, as the API and dashboard call it
    hub.refresh_from_db()  # no screen in the request: still as the other index scored it
    assert hub.screen_features[screening.HUBNESS_INDEX] == new.pk and not hub.quarantined
    corpus.refresh_from_db()
    assert corpus.active_index_id == old.pk
    _build(old)  # the active index's next build screens it again; the approval holds
    hub.refresh_from_db()
    assert hub.screen_features[screening.HUBNESS_INDEX] == old.pk and not hub.quarantined


def test_without_known_queries_the_screen_is_skipped_and_waits_for_them(user, screened_corpus):
    corpus = screened_corpus
    index = _fake_index(user, corpus)
    _plant_hub(index, QUERIES[:8])
    report = _build(index)["screening"]
    assert report["screened"] == 0 and report["waiting"] == 21
    assert "no queries" in report["skipped"]
    assert _held(corpus) == set()
    assert not Document.objects.filter(
        corpus=corpus, screen_features__has_key=screening.HUBNESS_INDEX
    ).exists()

    _queries(corpus, QUERIES[:8])  # once there are queries, the next build scores them
    report = _build(index)["screening"]
    assert report["screened"] == 21 and report["quarantined_ids"] == ["hub"]


def test_an_unscreened_corpus_is_not_screened_by_hubness(user, screened_corpus):
    corpus = screening.corpus_screening_update(corpus=screened_corpus, enabled=False)
    _queries(corpus, QUERIES[:8])
    index = _fake_index(user, corpus)
    _plant_hub(index, QUERIES[:8])
    assert "screening" not in _build(index)
    assert _held(corpus) == set()


def test_known_queries_are_a_seeded_sample_capped_and_deduplicated(user, screened_corpus):
    corpus = screened_corpus
    _queries(corpus, [f"query {i}" for i in range(30)], name="a")
    _queries(corpus, ["query 0", "query 1", "  "], name="b")
    texts, total = hub_screen.corpus_known_queries(corpus=corpus, limit=10)
    assert total == 33 and len(texts) == len(set(texts)) <= 10
    assert hub_screen.corpus_known_queries(corpus=corpus, limit=10)[0] == texts  # stable
    everything, _ = hub_screen.corpus_known_queries(corpus=corpus, limit=1000)
    assert sorted(everything) == sorted(f"query {i}" for i in range(30))


def test_the_real_model_quarantines_a_passage_made_of_the_known_queries(user):
    """all-MiniLM-L6-v2: the concatenation of the known queries sits in the top 10 of most
    of them; none of the new clean abstracts does better than the corpus's own."""
    corpus = CorpusFactory(owner=user, name="real-hub")
    # Enough clean abstracts that the 1 % bar is an order statistic, not their maximum.
    for i, text in enumerate(clean_documents(500)):
        _doc(corpus, f"c{i}", text, screened=False)
    for i, text in enumerate(clean_documents(10, seed=99)):
        _doc(corpus, f"n{i}", text, screened=True)
    _doc(corpus, "hub", " ".join(QUERIES), screened=True)
    corpus = screening.corpus_screening_update(corpus=corpus, enabled=True, fpr=0.01)
    _queries(corpus, QUERIES)
    index = services.index_create(owner=user, corpus=corpus, model_version=ModelVersionFactory())
    report = _build(index)["screening"]
    assert report["screened"] == 11 and report["known_queries"] == len(QUERIES)
    assert report["quarantined_ids"] == ["hub"]
    hub = Document.objects.get(corpus=corpus, external_id="hub")
    assert hub.quarantined and hub.screen_features["hubness"] >= len(QUERIES) // 2


def test_an_approved_hub_whose_metadata_alone_changed_stays_searchable_on_the_next_index(
    user, screened_corpus
):
    """The approval is of the hub's text: a re-upload that changes only its metadata (and so
    its updated_at, after the approval) does not let the next index quarantine it again."""
    corpus = screened_corpus
    _queries(corpus, QUERIES[:8])
    first = _fake_index(user, corpus)
    _plant_hub(first, QUERIES[:8])
    _build(first, activate=True)
    hub = Document.objects.get(corpus=corpus, external_id="hub")
    assert hub.quarantined
    decision = screening.document_quarantine_approve(document=hub, user=user)
    # What the ingest's upsert does to a metadata-only change (corpora/loading.py).
    Document.objects.filter(pk=hub.pk).update(metadata={"source": "v2"}, updated_at=timezone.now())
    hub.refresh_from_db()
    assert hub.updated_at > decision.decided_at and hub.content_hash == decision.content_hash

    second = _fake_index(user, corpus)
    _plant_hub(second, QUERIES[:8])
    report = _build(second, activate=True)["screening"]
    assert "hub" not in report["quarantined_ids"] and report["over_bar_approved"] == 1
    hub.refresh_from_db()
    assert not hub.quarantined and hub.screen_features[screening.HUBNESS_INDEX] == second.pk
