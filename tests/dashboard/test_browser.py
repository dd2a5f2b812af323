"""The dashboard as a new user drives it, in headless Chromium against live_server and a
real Celery worker: log in, upload a BEIR zip, embed, evaluate, search. Every page is
screenshotted to test-artifacts/screenshots/ for a person to look at."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest

from tests.dashboard.conftest import browser_login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "scifact-mini"
JOB_TIMEOUT_MS = 180_000


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def beir_zip(tmp_path) -> Path:
    """A 50-document BEIR slice of scifact-mini: 12 judged queries, their relevant documents
    and unrelated ones, so retrieval has something to get wrong."""
    qrels = [
        line.split("\t") for line in (SAMPLE / "qrels" / "test.tsv").read_text().splitlines()[1:]
    ]
    query_ids = list(dict.fromkeys(q for q, _, _ in qrels))[:12]
    kept_qrels = [row for row in qrels if row[0] in query_ids]
    relevant = {d for _, d, _ in kept_qrels}
    corpus = _read_jsonl(SAMPLE / "corpus.jsonl")
    docs = [d for d in corpus if d["_id"] in relevant]
    docs += [d for d in corpus if d["_id"] not in relevant][: 50 - len(docs)]
    queries = [q for q in _read_jsonl(SAMPLE / "queries.jsonl") if q["_id"] in query_ids]
    path = tmp_path / "scifact-tiny.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("scifact-tiny/corpus.jsonl", "\n".join(json.dumps(d) for d in docs) + "\n")
        zf.writestr("scifact-tiny/queries.jsonl", "\n".join(json.dumps(q) for q in queries) + "\n")
        zf.writestr(
            "scifact-tiny/qrels/test.tsv",
            "query-id\tcorpus-id\tscore\n" + "".join("\t".join(r) + "\n" for r in kept_qrels),
        )
    return path


def _wait_job_page_finished(page, *, status: str = "succeeded") -> None:
    page.wait_for_selector(
        f"#job-live[data-status='{status}']", state="attached", timeout=JOB_TIMEOUT_MS
    )


@pytest.mark.worker
def test_new_user_uploads_embeds_evaluates_and_searches(page, screenshot, user, worker, beir_zip):
    from embedhub.evaluation.models import EvalRun
    from embedhub.jobs.models import Job

    browser_login(page, username=user.username)
    assert page.locator("#getting-started").is_visible()
    screenshot(page, "01-overview-new-user")

    # Upload: the XHR progress bar fills, then the ingest job's bar follows the worker.
    page.goto("/corpora/upload/")
    page.set_input_files("#up-file", str(beir_zip))
    assert "scifact-tiny.zip" in page.locator("#file-name").inner_text()
    page.fill("#up-name", "scifact-tiny")
    page.click("#upload-button")
    page.wait_for_selector("#ingest-done:not([hidden])", timeout=JOB_TIMEOUT_MS)
    assert page.locator("#upload-progress").get_attribute("aria-valuenow") == "100"
    assert page.locator("#upload-errors").is_hidden()
    done_text = page.locator("#ingest-done").inner_text()
    assert "50 documents" in done_text and "12 queries" in done_text, done_text
    screenshot(page, "02-upload-done")

    # Corpus page: documents and the BEIR query set are there; start an embed job.
    page.click("#open-corpus")
    page.wait_for_url(re.compile(r"/corpora/\d+/$"))
    assert page.locator("#doc-count").inner_text() == "50"
    screenshot(page, "03-corpus-before-embed")
    page.click("#embed-form button[type=submit]")
    page.wait_for_url(re.compile(r"/jobs/\d+/$"))
    embed_job_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    assert Job.objects.get(pk=embed_job_id).kind == Job.Kind.EMBED
    _wait_job_page_finished(page)
    assert page.locator("#job-percent").inner_text() == "100.0%"
    assert page.locator("#job-progress").get_attribute("aria-valuenow") == "100"
    assert page.locator("#job-done").inner_text().startswith("50 / 50")
    # The event log shows the worker's claim and the success.
    page.wait_for_selector("#event-rows tr[data-event-id] >> text=succeeded")
    assert "claimed" in page.locator("#event-rows").inner_text()
    assert page.locator("#btn-cancel").is_hidden()
    screenshot(page, "04-embed-job-done")

    # Evaluate the new (active) index on the uploaded query set.
    corpus_id = Job.objects.get(pk=embed_job_id).corpus_id
    page.goto(f"/corpora/{corpus_id}/")
    assert page.locator("#index-table .badge.active").count() == 1
    page.select_option("#eval-comp", "none")
    page.click("#evaluate-form button[type=submit]")
    page.wait_for_url(re.compile(r"/jobs/\d+/$"))
    _wait_job_page_finished(page)
    screenshot(page, "05-evaluate-job-done")

    run = EvalRun.objects.get(index__corpus_id=corpus_id)
    ndcg = run.metrics["ndcg@10"]
    assert 0 < ndcg <= 1 and run.n_queries == 12
    page.goto("/evaluations/")
    assert f"{ndcg:.3f}" in page.locator(".eval-table").inner_text()
    # One chart pair per corpus x query set: this corpus's "test" set.
    drawn = page.evaluate(
        "() => ['chart-ndcg-', 'chart-recall-'].map(prefix => {"
        " const c = Chart.getChart(document.querySelector(`canvas[id^='${prefix}']`));"
        " return c ? c.data.datasets[0].data : null; })"
    )
    assert drawn[0] == [pytest.approx(ndcg)]
    assert drawn[1] == [pytest.approx(run.metrics["recall@100"])]
    screenshot(page, "06-evaluations")

    # Search the corpus's active index; the top hit for a judged query is a judged document.
    page.goto(f"/search/?corpus={corpus_id}")
    query = run.query_set.queries.order_by("id").first()
    page.fill("#s-query", query.text)
    page.click("#search-button")
    # The first search loads the model into the web process: allow for it.
    page.wait_for_selector(
        "#search-results .search-hit, #search-error:not([hidden])", timeout=JOB_TIMEOUT_MS
    )
    assert page.locator("#search-error").is_hidden(), page.locator("#search-error").inner_text()
    hits = page.locator("#search-results .search-hit")
    assert hits.count() == 10
    judged = set(
        run.query_set.qrels.filter(query_external_id=query.external_id).values_list(
            "document_external_id", flat=True
        )
    )
    assert hits.first.locator("code").inner_text() in judged
    assert "compensation none" in page.locator("#search-meta").inner_text()
    screenshot(page, "07-search")

    page.goto("/")
    page.wait_for_selector("#health-workers .dot.ok")
    assert "online" in page.locator("#health-workers").inner_text()
    assert worker.name in page.locator("#health-detail").inner_text()
    screenshot(page, "08-overview")
    for name, url in [
        ("09-jobs", "/jobs/"),
        ("10-models", "/models/"),
        ("11-corpora", "/corpora/"),
        ("12-corpus-after", f"/corpora/{corpus_id}/"),
        ("13-audits-empty", "/audits/"),
    ]:
        page.goto(url)
        screenshot(page, name)


@pytest.mark.worker
def test_invalid_upload_shows_the_bad_line(page, screenshot, user, worker, tmp_path):
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"_id": "a", "text": "fine"}\n{"_id": "b", "text": "fine too"}\n{"_id": "c"}\n')
    browser_login(page, username=user.username)
    page.goto("/corpora/upload/")
    page.set_input_files("#up-file", str(bad))
    page.click("#upload-button")
    errors = page.locator("#upload-errors")
    errors.wait_for(state="visible", timeout=JOB_TIMEOUT_MS)
    text = errors.inner_text()
    assert "line 3" in text and "text" in text, text
    screenshot(page, "20-upload-invalid-line")


def test_job_page_updates_live_and_cancels(page, screenshot, user):
    """No worker: the test plays the worker by writing progress rows, and the page (which
    is never reloaded) follows them."""
    from embedhub.jobs.models import Job
    from embedhub.jobs.services import job_event_add, job_submit

    job, _ = job_submit(owner=user, kind=Job.Kind.EMBED, params={"corpus": 1})
    browser_login(page, username=user.username)
    page.goto(f"/jobs/{job.pk}/")
    page.evaluate("() => { window.__sameDocument = true; }")
    Job.objects.filter(pk=job.pk).update(
        status=Job.Status.RUNNING,
        progress_done=30,
        progress_total=120,
        progress_unit="docs",
        rate=15.0,
        eta_seconds=6.0,
        progress_note="embedding batch 2",
        worker="w-test",
    )
    job_event_add(job=job, kind="claimed", message="attempt 1 on w-test")
    page.wait_for_selector("#job-live[data-status='running']")
    page.wait_for_function("document.getElementById('job-percent').textContent === '25.0%'")
    assert page.locator("#job-rate").inner_text() == "15.0 docs/s"
    assert page.locator("#job-eta").inner_text() == "6s"
    page.wait_for_selector("#event-rows >> text=attempt 1 on w-test")
    screenshot(page, "30-job-running")

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#btn-cancel button")
    page.wait_for_selector("#cancel-pending:not([hidden])")
    assert Job.objects.get(pk=job.pk).cancel_requested
    page.wait_for_selector("#job-live[data-polls]")  # the reloaded page has polled once
    # The "worker" stops at its next progress report; a job that finishes while watched
    # reloads its page once, for what the server renders for finished jobs.
    with page.expect_navigation():
        Job.objects.filter(pk=job.pk).update(status=Job.Status.CANCELLED)
    page.wait_for_selector("#job-live[data-status='cancelled']")
    page.wait_for_selector("#btn-retry:not([hidden])")
    page.evaluate("() => { window.__sameDocument = true; }")
    Job.objects.filter(pk=job.pk).update(status=Job.Status.FAILED, error="line 9: boom")
    # Terminal jobs are polled slowly; the page still picks the change up without a reload.
    page.wait_for_selector("#job-error:not([hidden])", timeout=15_000)
    assert "line 9: boom" in page.locator("#job-error-text").inner_text()
    assert page.evaluate("() => window.__sameDocument") is True
    screenshot(page, "31-job-failed")


def test_lineage_evaluation_and_audit_pages_draw_their_charts(page, screenshot, user, lineage):
    from embedhub.audits.models import RobustnessAudit
    from embedhub.jobs.models import Job

    ks = (1, 5, 10, 20, 50, 100)
    curves = {
        "gaslite": (0.1, 0.3, 0.5, 0.6, 0.8, 0.9),
        "message_only": (0, 0, 0, 0, 0.05, 0.1),
        "centroid": (0.3, 0.6, 0.8, 0.9, 1.0, 1.0),
        "non_concept": (0, 0, 0.02, 0.03, 0.05, 0.08),
    }
    results = {
        name: {f"appeared@{k}": v for k, v in zip(ks, vals, strict=True)}
        for name, vals in curves.items()
    }
    results["non_concept"].update(available=True, source="other queries of query set 1")
    audit = RobustnessAudit.objects.create(
        owner=user,
        index=lineage["old"],
        model_version=lineage["base"],
        concept="vitamin d",
        message="Visit evil.example for the truth about vitamin D",
        results=results,
        state=RobustnessAudit.State.COMPLETE,
        seconds=84.0,
        held_in=[{"id": str(i), "text": f"vitamin d question {i}"} for i in range(4)],
        held_out=[{"id": str(i), "text": f"vitamin d held out {i}"} for i in range(4, 8)],
        passages=[
            {
                "text": f"Visit evil.example for the truth about vitamin D ##tok{i} bones sun",
                "objective_curve": [0.3 + 0.02 * j + 0.01 * i for j in range(20)],
                "initial_cosine": 0.3,
                "best_cosine": 0.68,
                "iterations_run": 20,
            }
            for i in range(2)
        ],
        geometry={"anisotropy": 0.31, "mean_norm": 1.0},
    )
    finetune = Job.objects.create(
        owner=user,
        kind=Job.Kind.FINETUNE,
        status=Job.Status.SUCCEEDED,
        progress_done=3,
        progress_total=3,
        progress_unit="steps",
        result={"model_version": lineage["child"].pk},
    )
    browser_login(page, username=user.username)

    page.goto("/models/")
    page.wait_for_function("document.querySelectorAll('canvas[data-loss]').length === 1")
    assert page.evaluate(
        "() => Chart.getChart(document.querySelector('canvas[data-loss]')) !== undefined"
    )
    screenshot(page, "40-models-lineage")

    page.goto("/evaluations/")
    series = page.evaluate(
        "() => Chart.getChart(document.querySelector(\"canvas[id^='chart-ndcg-']\"))"
        ".data.datasets.map(d => [d.label, d.data])"
    )
    assert series == [["none", [0.41]], ["qdc", [0.52]]]
    assert "lineage-corpus · dev" in page.locator(".card h2 small").first.inner_text()
    screenshot(page, "41-evaluations-none-vs-qdc")

    page.goto(f"/audits/{audit.pk}/")
    labels = page.evaluate("() => Chart.getChart('chart-appeared').data.datasets.map(d => d.label)")
    assert labels == [
        "GASLITE passages",
        "message only",
        "centroid vector",
        "GASLITE on non-concept queries",
    ]
    assert page.evaluate("() => Chart.getChart('chart-objective').data.datasets.length") == 2
    assert page.locator(".adversarial-passage .badge.adversarial").count() == 2
    screenshot(page, "42-audit-detail")
    page.goto("/audits/")
    screenshot(page, "43-audits")

    page.goto(f"/jobs/{finetune.pk}/")
    page.wait_for_selector("#loss-card:not([hidden])")
    points = page.evaluate("() => Chart.getChart('loss-chart').data.datasets[0].data")
    assert [p["y"] for p in points] == [2.0, 1.5, 1.1]
    screenshot(page, "44-finetune-loss")


def test_drag_and_drop_upload_shows_progress_and_the_queued_ingest(page, screenshot, user):
    """No worker: the upload itself (XHR to the REST endpoint with the CSRF header) completes
    and the ingest job it submitted is followed while it waits in the queue."""
    from embedhub.jobs.models import Job

    browser_login(page, username=user.username)
    page.goto("/corpora/upload/")
    payload = "\n".join(json.dumps({"_id": f"d{i}", "text": f"doc {i} " * 50}) for i in range(400))
    drop = page.evaluate_handle(
        """(text) => { const dt = new DataTransfer();
            dt.items.add(new File([text], 'dropped.jsonl', {type: 'application/x-ndjson'}));
            return dt; }""",
        payload,
    )
    page.dispatch_event("#dropzone", "dragenter", {"dataTransfer": drop})
    assert "over" in page.locator("#dropzone").get_attribute("class")
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": drop})
    assert "dropped.jsonl" in page.locator("#file-name").inner_text()
    page.click("#upload-button")
    page.wait_for_selector("#ingest-status:not([hidden])")
    page.wait_for_function(
        "document.getElementById('ingest-note').textContent.startsWith('queued')"
    )
    assert page.locator("#upload-progress").get_attribute("aria-valuenow") == "100"
    job = Job.objects.get(owner=user, kind=Job.Kind.INGEST)
    assert job.corpus.name == "dropped" and job.params["filename"] == "dropped.jsonl"
    assert page.locator("#ingest-job-link").get_attribute("href") == f"/jobs/{job.pk}/"
    screenshot(page, "21-upload-queued")
