"""The audit reports the defence, on the real model at tiny settings, through a real worker:
each detector's recall at 1 % and 5 % false positives on the corpus's clean documents,
appeared@10 with the screen on, and an adaptive attack reported beside the plain one."""

from __future__ import annotations

import pytest

from embedhub.audits.models import RobustnessAudit
from embedhub.audits.selectors import audit_comparison
from tests.audits.conftest import audit_params
from tests.conftest import wait_for_job
from workers.ml.detectors import TEXT_FEATURES

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker, pytest.mark.slow]


def _run(api, params: dict) -> RobustnessAudit:
    response = api.post("/api/v1/jobs/", {"kind": "audit", "params": params}, format="json")
    assert response.status_code == 202, response.content
    job = wait_for_job(response.json()["id"], timeout=240)
    assert job.status == "succeeded", job.error
    audit = RobustnessAudit.objects.get(job_id=job.pk)
    assert (
        job.result["gaslite_recall@1%"]
        == (audit.results["defence"]["attacks"]["gaslite"]["recall"]["0.01"]["combined"]["recall"])
    )
    return audit


def _defence_checks(audit: RobustnessAudit) -> dict:
    defence = audit.results["defence"]
    assert defence["available"] is True
    assert set(defence["features"]) == {*TEXT_FEATURES, "hubness"}
    # 40 documents: 20 fit the statistics, 10 calibrate, 10 measure the rate.
    assert defence["n_clean"] == {"fit": 20, "calibrate": 10, "test": 10}
    assert defence["n_known_queries"] == len(audit.held_in) + 6  # held-in + non-concept
    for name, n in (("gaslite", len(audit.passages)), ("message_only", 1)):
        attack = defence["attacks"][name]
        assert attack["n"] == n and len(attack["flagged"]["combined"]) == n
        for rate in ("0.01", "0.05"):
            row = attack["recall"][rate]
            assert set(row) == {*defence["features"], "combined"}
            assert all(0.0 <= v["recall"] <= 1.0 for v in row.values())
            assert all(v["clean_fpr"] <= float(rate) + 0.1 for v in row.values())
    gaslite = defence["attacks"]["gaslite"]
    plain = audit.results["gaslite"]["appeared@10"]
    for screen in ("combined", "text"):
        screened = gaslite["appeared@10_screened"][screen]
        assert 0.0 <= screened <= plain
        if all(gaslite["flagged"][screen]):
            assert screened == 0.0  # a screened-out passage cannot appear
    return defence


def test_audit_reports_the_defence_and_an_adaptive_attack(
    api, client, user, real_index, query_set, worker
):
    plain = _run(api, audit_params(real_index, seed=1))
    _defence_checks(plain)

    adaptive = _run(api, audit_params(real_index, seed=1, adaptive=True, naturalness_weight=0.05))
    assert adaptive.params["adaptive"] is True and adaptive.params["naturalness_weight"] == 0.05
    _defence_checks(adaptive)
    for passage in adaptive.passages:
        assert passage["best_objective"] is not None
        assert passage["best_objective"] <= passage["best_cosine"]
    assert all(p["best_objective"] is None for p in plain.passages)

    # The versions table keeps plain and adaptive attacks apart, with the screened figure.
    rows = audit_comparison(user=user, concept="vitamin D")
    assert [(r["adaptive"], r["audit"]) for r in rows] == [(False, plain.pk), (True, adaptive.pk)]
    assert rows[0]["corpus"] == real_index.corpus_id
    assert (
        rows[0]["gaslite_appeared@10_screened"]
        == (plain.results["defence"]["attacks"]["gaslite"]["appeared@10_screened"]["combined"])
    )

    client.force_login(user)
    html = client.get(f"/audits/{adaptive.pk}/").content.decode()
    assert 'id="defence-table"' in html and "adaptive attack (naturalness weight 0.05)" in html
    listing = client.get("/audits/").content.decode()
    assert "Screened (1 % FPR)" in listing and "adaptive" in listing
