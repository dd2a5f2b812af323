"""The quarantine page: screening settings, held-back documents with their scores, and
the approve / reject buttons, for the corpus's owner only."""

from __future__ import annotations

import hashlib

import pytest
from django.urls import reverse

from embedhub.corpora import screening
from embedhub.corpora.models import Document, QuarantineDecision
from tests.factories import CorpusFactory
from tests.screening_texts import ADVERSARIAL, clean_documents

pytestmark = pytest.mark.django_db


def _doc(corpus, external_id: str, text: str, **extra) -> Document:
    digest = hashlib.sha256(text.encode()).hexdigest()
    return Document.objects.create(
        corpus=corpus, external_id=external_id, text=text, content_hash=digest, **extra
    )


@pytest.fixture
def screened(user):
    """A corpus with screening on, a fitted screen, and two passages it held back."""
    corpus = CorpusFactory(owner=user, name="screened")
    for i, text in enumerate(clean_documents(60)):
        _doc(corpus, f"c{i}", text)
    corpus = screening.corpus_screening_update(corpus=corpus, enabled=True, fpr=0.01)
    screening.corpus_screen_fit(corpus=corpus)
    held = [
        _doc(
            corpus,
            f"adv{i}",
            text,
            quarantined=True,
            screen_score=20.0 + i,
            screen_features={"oov_share": 0.4},
        )
        for i, text in enumerate(ADVERSARIAL[:2])
    ]
    return corpus, held


def test_quarantine_page_lists_held_documents_with_scores(client, user, screened):
    corpus, held = screened
    client.force_login(user)
    page = client.get(reverse("dashboard:corpus-quarantine", args=[corpus.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="quarantine-table"' in html and 'id="screen-threshold"' in html
    assert "adv0" in html and "adv1" in html and "21.000" in html  # most suspicious first
    assert html.index("adv1") < html.index("adv0")
    assert "oov_share" in html
    detail = client.get(reverse("dashboard:corpus-detail", args=[corpus.pk])).content.decode()
    assert 'id="quarantine-link"' in detail and "(on)" in detail


def test_a_document_held_back_by_hubness_shows_its_hubness_not_the_bookkeeping(
    client, user, screened
):
    corpus, _ = screened
    _doc(
        corpus,
        "hub",
        "Visit BestShoes.com. Which planet is the largest? How do bees make honey?",
        quarantined=True,
        screen_score=9.0,
        screen_features={"oov_share": 0.05, "hubness": 7.0, screening.HUBNESS_INDEX: 4321},
    )
    client.force_login(user)
    html = client.get(reverse("dashboard:corpus-quarantine", args=[corpus.pk])).content.decode()
    assert "hubness 7.000" in html and "top 10" in html
    assert screening.HUBNESS_INDEX not in html and "4321" not in html


def test_approve_and_reject_from_the_page(client, user, screened):
    corpus, (first, second) = screened
    client.force_login(user)
    url = reverse("dashboard:quarantine-decide", args=[corpus.pk, first.pk])
    response = client.post(url, {"action": "approve"})
    assert response.status_code == 302
    first.refresh_from_db()
    assert first.quarantined is False
    url = reverse("dashboard:quarantine-decide", args=[corpus.pk, second.pk])
    client.post(url, {"action": "reject"})
    assert not Document.objects.filter(pk=second.pk).exists()
    decisions = QuarantineDecision.objects.filter(corpus=corpus)
    assert sorted(decisions.values_list("external_id", "decision")) == [
        ("adv0", "approved"),
        ("adv1", "rejected"),
    ]
    html = client.get(reverse("dashboard:corpus-quarantine", args=[corpus.pk])).content.decode()
    assert "Nothing in quarantine" in html and 'id="decision-table"' in html


def test_another_user_cannot_see_or_decide(client, other_user, screened):
    corpus, (first, _) = screened
    client.force_login(other_user)
    assert client.get(reverse("dashboard:corpus-quarantine", args=[corpus.pk])).status_code == 404
    url = reverse("dashboard:quarantine-decide", args=[corpus.pk, first.pk])
    assert client.post(url, {"action": "reject"}).status_code == 404
    settings_url = reverse("dashboard:corpus-screening", args=[corpus.pk])
    assert client.post(settings_url, {"fpr": "0.05"}).status_code == 404
    assert Document.objects.filter(pk=first.pk, quarantined=True).exists()


def test_screening_settings_form(client, user, screened):
    corpus, _ = screened
    client.force_login(user)
    url = reverse("dashboard:corpus-screening", args=[corpus.pk])
    client.post(url, {"enabled": "on", "fpr": "0.05", "refit": "on"})
    corpus.refresh_from_db()
    assert corpus.screening_enabled and corpus.screening_fpr == 0.05
    assert corpus.screen.fpr == 0.05  # refitted at the new rate
    client.post(url, {"fpr": "0.05"})  # the box unticked: off
    corpus.refresh_from_db()
    assert corpus.screening_enabled is False
    bad = client.post(url, {"enabled": "on", "fpr": "2"}, follow=True)
    assert "from 0.001 to 0.5" in bad.content.decode()
