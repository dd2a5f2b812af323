"""Reading audits: list filters, detail, ownership (404 for others, all for staff), and the
per-version comparison for the dashboard. Rows are written directly: these tests are about
the reads, the job that writes them is tested in test_audit_job.py."""

from __future__ import annotations

import pytest

from embedhub.audits.models import RobustnessAudit
from embedhub.audits.selectors import audit_comparison
from tests.factories import ModelVersionFactory

pytestmark = pytest.mark.django_db


def _audit(index, *, concept="vitamin D", version=None, gaslite=0.5, state="complete"):
    results = {
        "gaslite": {"appeared@10": gaslite},
        "message_only": {"appeared@10": 0.0},
        "centroid": {"appeared@10": 1.0},
        "non_concept": {"available": True, "appeared@10": 0.0},
    }
    return RobustnessAudit.objects.create(
        owner=index.owner,
        index=index,
        model_version=version or index.model_version,
        concept=concept,
        message="m",
        state=state,
        results=results,
        passages=[{"text": "m. x"}],
        held_in=[{"id": "a", "text": "a"}],
        held_out=[{"id": "b", "text": "b"}, {"id": "c", "text": "c"}],
    )


def test_list_detail_and_filters(api, ready_index):
    first = _audit(ready_index)
    second = _audit(ready_index, concept="diabetes", gaslite=0.25)
    body = api.get("/api/v1/audits/").json()
    assert [row["id"] for row in body["results"]] == [second.pk, first.pk]
    assert body["results"][0]["headline"] == {
        "gaslite": 0.25,
        "message_only": 0.0,
        "centroid": 1.0,
        "non_concept": 0.0,
    }
    assert body["results"][0]["n_held_out"] == 2 and "passages" not in body["results"][0]
    by_concept = api.get("/api/v1/audits/", {"concept": "vitamin D"}).json()["results"]
    assert [row["id"] for row in by_concept] == [first.pk]
    by_index = api.get("/api/v1/audits/", {"index": ready_index.pk}).json()["results"]
    assert len(by_index) == 2
    assert api.get("/api/v1/audits/", {"index": ready_index.pk + 1000}).status_code == 400
    by_version = api.get("/api/v1/audits/", {"model_version": ready_index.model_version_id})
    assert len(by_version.json()["results"]) == 2
    detail = api.get(f"/api/v1/audits/{first.pk}/").json()
    assert detail["passages"] == [{"text": "m. x"}] and detail["corpus"] == ready_index.corpus_id


def test_other_users_see_404_and_staff_sees_all(api, other_api, staff_api, ready_index):
    audit = _audit(ready_index)
    response = other_api.get(f"/api/v1/audits/{audit.pk}/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert other_api.get("/api/v1/audits/").json()["results"] == []
    assert staff_api.get(f"/api/v1/audits/{audit.pk}/").status_code == 200
    assert api.get("/api/v1/audits/999999/").status_code == 404


def test_comparison_takes_the_latest_complete_audit_per_version_and_concept(api, ready_index):
    child = ModelVersionFactory(parent=ready_index.model_version)
    _audit(ready_index, gaslite=0.1)
    latest = _audit(ready_index, gaslite=0.3)
    _audit(ready_index, gaslite=0.9, state="attacking")  # unfinished: not compared
    other = _audit(ready_index, version=child, gaslite=0.6)
    _audit(ready_index, concept="diabetes", gaslite=0.2)
    rows = audit_comparison(user=ready_index.owner, concept="vitamin D")
    assert [(r["model_version"], r["audit"], r["gaslite"]) for r in rows] == [
        (ready_index.model_version_id, latest.pk, 0.3),
        (child.pk, other.pk, 0.6),
    ]
    assert rows[0]["centroid"] == 1.0 and rows[0]["message_only"] == 0.0
    everything = api.get("/api/v1/audits/comparison/").json()
    assert [(r["concept"], r["gaslite"]) for r in everything] == [
        ("diabetes", 0.2),
        ("vitamin D", 0.3),
        ("vitamin D", 0.6),
    ]
