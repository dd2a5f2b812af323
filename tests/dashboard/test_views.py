"""The dashboard's pages through Django's test client: login, ownership, empty states,
and the forms that write through the apps' services."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from django.urls import URLPattern, reverse

from dashboard.urls import urlpatterns
from embedhub.jobs.models import Job
from embedhub.jobs.services import job_submit
from tests.factories import CorpusFactory, DocumentFactory, ModelVersionFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def client_for(client):
    def login(user):
        client.force_login(user)
        return client

    return login


def _all_dashboard_urls() -> list[tuple[str, str]]:
    urls = []
    for pattern in urlpatterns:
        assert isinstance(pattern, URLPattern)
        kwargs = {name: 1 for name in pattern.pattern.converters}
        urls.append((pattern.name, reverse(f"dashboard:{pattern.name}", kwargs=kwargs)))
    return urls


@pytest.mark.parametrize("name,url", _all_dashboard_urls())
def test_every_dashboard_page_requires_login(client, name, url):
    response = client.get(url)
    if response.status_code == 405:  # POST-only actions: an anonymous POST must bounce too
        response = client.post(url)
    assert response.status_code == 302, name
    assert response["Location"].startswith("/accounts/login/?next=")


def test_login_page_renders_and_logs_in(client, user):
    page = client.get("/accounts/login/")
    assert page.status_code == 200
    assert b'name="username"' in page.content and b"csrfmiddlewaretoken" in page.content
    response = client.post("/accounts/login/", {"username": "alice", "password": "pw"})
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 200


def test_wrong_password_is_shown_on_the_login_page(client, user):
    response = client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert b"didn't match" in response.content


def test_new_user_overview_tells_what_to_do_next(client_for, user):
    response = client_for(user).get("/")
    body = response.content.decode()
    assert response.status_code == 200
    assert 'id="getting-started"' in body
    assert "Upload a corpus" in body and "Run an embed job" in body
    assert "No corpora yet" in body and "No jobs yet" in body


@pytest.mark.parametrize(
    "url,text",
    [
        ("/corpora/", "No corpora yet"),
        ("/jobs/", "No jobs yet"),
        ("/models/", "No model versions registered"),
        ("/evaluations/", "No evaluation runs yet"),
        ("/audits/", "No audits yet"),
        ("/search/", "Nothing to search yet"),
        ("/corpora/upload/", "Drop a file here"),
    ],
)
def test_empty_states_render(client_for, user, url, text):
    response = client_for(user).get(url)
    assert response.status_code == 200
    assert text in response.content.decode()


def test_overview_lists_own_corpora_and_jobs_only(client_for, user, other_user):
    mine = CorpusFactory(owner=user, name="my-corpus")
    CorpusFactory(owner=other_user, name="their-corpus")
    job, _ = job_submit(owner=user, kind=Job.Kind.EMBED, params={}, corpus=mine)
    body = client_for(user).get("/").content.decode()
    assert "my-corpus" in body and "their-corpus" not in body
    assert f'href="/jobs/{job.pk}/"' in body
    assert 'id="getting-started"' not in body


def test_another_users_corpus_and_job_pages_are_404(client_for, user, other_user):
    corpus = CorpusFactory(owner=user)
    job, _ = job_submit(owner=user, kind=Job.Kind.EMBED, params={}, corpus=corpus)
    client = client_for(other_user)
    assert client.get(f"/corpora/{corpus.pk}/").status_code == 404
    assert client.get(f"/jobs/{job.pk}/").status_code == 404
    assert client.post(f"/jobs/{job.pk}/cancel/").status_code == 404
    assert client.post(f"/jobs/{job.pk}/retry/").status_code == 404
    assert Job.objects.get(pk=job.pk).status == Job.Status.QUEUED


def test_staff_see_other_users_objects(client_for, user, staff_user):
    corpus = CorpusFactory(owner=user, name="alice-data")
    job, _ = job_submit(owner=user, kind=Job.Kind.EMBED, params={}, corpus=corpus)
    client = client_for(staff_user)
    assert client.get(f"/corpora/{corpus.pk}/").status_code == 200
    assert "alice-data" in client.get("/corpora/").content.decode()
    assert client.get(f"/jobs/{job.pk}/").status_code == 200


def test_job_list_filters_by_kind_status_and_corpus(client_for, user):
    a = CorpusFactory(owner=user, name="a")
    b = CorpusFactory(owner=user, name="b")
    embed_a, _ = job_submit(owner=user, kind=Job.Kind.EMBED, params={}, corpus=a)
    eval_b, _ = job_submit(owner=user, kind=Job.Kind.EVALUATE, params={}, corpus=b)
    Job.objects.filter(pk=eval_b.pk).update(status=Job.Status.FAILED)
    client = client_for(user)

    def listed(query: str) -> set[int]:
        body = client.get(f"/jobs/?{query}").content.decode()
        return {j for j in (embed_a.pk, eval_b.pk) if f'data-job-id="{j}"' in body}

    assert listed("") == {embed_a.pk, eval_b.pk}
    assert listed("kind=embed") == {embed_a.pk}
    assert listed("status=failed") == {eval_b.pk}
    assert listed(f"corpus={a.pk}") == {embed_a.pk}
    assert listed(f"corpus={a.pk}&status=failed") == set()
    assert "No jobs match these filters" in client.get("/jobs/?kind=audit").content.decode()


def test_job_page_shows_progress_error_and_events(client_for, user):
    job, _ = job_submit(owner=user, kind=Job.Kind.EMBED, params={"corpus": 1})
    Job.objects.filter(pk=job.pk).update(
        status=Job.Status.FAILED,
        progress_done=30,
        progress_total=120,
        progress_unit="documents",
        error="line 7: missing field 'text'",
    )
    body = client_for(user).get(f"/jobs/{job.pk}/").content.decode()
    assert "width:25.0%" in body  # 30 of 120
    assert "30 / 120 documents" in body
    assert "line 7: missing field &#x27;text&#x27;" in body
    assert "submitted" in body  # the event log's first event
    assert 'id="btn-retry"' in body and 'id="btn-retry" hidden' not in body


def test_cancel_and_retry_buttons_go_through_the_job_services(client_for, user):
    job, _ = job_submit(owner=user, kind=Job.Kind.EMBED, params={})
    client = client_for(user)
    response = client.post(f"/jobs/{job.pk}/cancel/")
    assert response.status_code == 302
    assert Job.objects.get(pk=job.pk).status == Job.Status.CANCELLED
    client.post(f"/jobs/{job.pk}/retry/")
    assert Job.objects.get(pk=job.pk).status == Job.Status.QUEUED
    # Retrying a queued job is refused with a message, not an error page.
    page = client.post(f"/jobs/{job.pk}/retry/", follow=True).content.decode()
    assert "only failed or cancelled jobs can be retried" in page


def test_job_start_reports_the_preparers_error(client_for, user, other_user):
    theirs = CorpusFactory(owner=other_user)
    version = ModelVersionFactory()
    client = client_for(user)
    response = client.post(
        "/jobs/start/",
        {"kind": "embed", "corpus": theirs.pk, "model_version": version.pk, "next": "/corpora/"},
        follow=True,
    )
    assert response.redirect_chain[-1][0] == "/corpora/"
    assert "Could not start the embed job" in response.content.decode()
    assert not Job.objects.filter(owner=user).exists()


def test_job_start_rejects_an_offsite_next(client_for, user):
    response = client_for(user).post(
        "/jobs/start/", {"kind": "nope", "next": "https://evil.example/"}
    )
    assert response["Location"] == "/"


def test_csrf_is_enforced_on_dashboard_forms(user):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    job, _ = job_submit(owner=user, kind=Job.Kind.EMBED, params={})
    assert client.post(f"/jobs/{job.pk}/cancel/").status_code == 403
    assert Job.objects.get(pk=job.pk).status == Job.Status.QUEUED


def test_corpus_page_counts_documents_and_offers_embedding(client_for, user):
    corpus = CorpusFactory(owner=user, name="docs")
    DocumentFactory.create_batch(3, corpus=corpus)
    ModelVersionFactory()
    body = client_for(user).get(f"/corpora/{corpus.pk}/").content.decode()
    assert '<div class="stat" id="doc-count">3</div>' in body
    assert 'id="embed-form"' in body
    assert "Not embedded yet" in body


def test_health_reports_queues_even_without_workers(client_for, user):
    data = client_for(user).get("/health/").json()
    assert data["queues"]["ok"] is True
    assert set(data["queues"]["queues"]) == {"cpu", "gpu"}
    # No worker of this test run is up (another run sharing the Redis db could answer).
    assert data["workers"]["ok"] == bool(data["workers"]["workers"])
    assert data["workers"]["error"] == ""


# ------------------------------------------------------------------ models, evaluations, audits


def test_models_page_shows_lineage_drift_scores_and_promote(client_for, user, lineage):
    body = client_for(user).get("/models/").content.decode()
    base, child = lineage["base"], lineage["child"]
    # The child is nested under its parent in the tree.
    base_at = body.index(f'id="version-{base.pk}"')
    child_at = body.index(f'id="version-{child.pk}"')
    assert base_at < child_at
    assert '<ul class="tree">' in body[base_at:child_at]
    assert "0.1234" in body  # drift norm of the child
    assert "0.410" in body and "0.520" in body  # its scores, none and qdc
    assert f'action="/indexes/{lineage["new"].pk}/activate/"' in body and "Promote" in body
    assert "data-loss=" in body  # the child's loss curve is charted


def test_promote_then_roll_back_through_the_dashboard(client_for, user, lineage):
    from embedhub.corpora.models import Corpus
    from embedhub.vectors.models import VectorIndex

    client = client_for(user)
    corpus, old, new = lineage["corpus"], lineage["old"], lineage["new"]
    response = client.post(f"/indexes/{new.pk}/activate/", {"next": "/models/"})
    assert response["Location"] == "/models/"
    assert Corpus.objects.get(pk=corpus.pk).active_index_id == new.pk
    assert VectorIndex.objects.get(pk=old.pk).state == VectorIndex.State.RETIRED
    page = client.get(f"/corpora/{corpus.pk}/").content.decode()
    assert "Roll back to this" in page
    client.post(f"/indexes/{old.pk}/activate/")
    assert Corpus.objects.get(pk=corpus.pk).active_index_id == old.pk


def test_another_user_cannot_activate_an_index(client_for, other_user, lineage):
    from embedhub.corpora.models import Corpus

    response = client_for(other_user).post(f"/indexes/{lineage['new'].pk}/activate/")
    assert response.status_code == 404
    assert Corpus.objects.get(pk=lineage["corpus"].pk).active_index_id == lineage["old"].pk


def test_evaluation_chart_puts_none_and_qdc_side_by_side(client_for, user, lineage):
    response = client_for(user).get("/evaluations/")
    [chart] = response.context["charts"]
    assert (chart["corpus"], chart["query_set"]) == ("lineage-corpus", "dev")
    child, base = lineage["child"], lineage["base"]
    label = f"{child.model.name} v{child.version} → index of {base.model.name} v{base.version}"
    assert chart["labels"] == [label]
    ndcg = {d["label"]: d["data"] for d in chart["datasets"] if d["metric"] == "ndcg@10"}
    assert ndcg == {"none": [0.41], "qdc": [0.52]}
    assert 'id="eval-chart-data"' in response.content.decode()


def test_evaluation_table_shows_ann_recall_at_10_and_at_the_runs_k(client_for, user, lineage):
    from embedhub.evaluation.models import EvalRun

    exact = lineage["runs"]["none"]
    EvalRun.objects.create(
        owner=user,
        query_set=exact.query_set,
        index=exact.index,
        model_version=exact.model_version,
        mode="ann",
        metrics=exact.metrics,
        n_queries=5,
        ann_recall_at_10=0.987,
        ann_recall_at_k=0.912,
        params={"k": 100},
    )
    body = client_for(user).get("/evaluations/").content.decode()
    assert "ANN recall vs exact" in body
    assert "@10 0.987 · @100 0.912" in body
    assert '<span class="muted">exact</span>' in body  # the exact runs have none


def test_audit_pages_mark_passages_adversarial_and_chart_baselines(client_for, user, lineage):
    from embedhub.audits.models import RobustnessAudit

    results = {
        name: {"appeared@1": a, "appeared@10": b, "appeared@100": c}
        for name, (a, b, c) in {
            "gaslite": (0.2, 0.6, 0.9),
            "message_only": (0.0, 0.0, 0.1),
            "centroid": (0.4, 0.8, 1.0),
        }.items()
    }
    results["non_concept"] = {"available": True, "source": "other queries", "appeared@10": 0.05}
    audit = RobustnessAudit.objects.create(
        owner=user,
        index=lineage["old"],
        model_version=lineage["base"],
        concept="vitamin d",
        message="Visit evil.example",
        state=RobustnessAudit.State.COMPLETE,
        results=results,
        held_in=[{"id": "1", "text": "does vitamin d help"}],
        held_out=[{"id": "2", "text": "vitamin d and bones"}],
        passages=[
            {
                "text": "Visit evil.example vitamin bone zzz",
                "objective_curve": [0.3, 0.5],
                "initial_cosine": 0.3,
                "best_cosine": 0.5,
                "iterations_run": 2,
            }
        ],
    )
    client = client_for(user)
    listing = client.get("/audits/").content.decode()
    assert "vitamin d" in listing and "60.0%" in listing and "80.0%" in listing
    detail = client.get(f"/audits/{audit.pk}/").content.decode()
    assert '<div class="stat" id="headline-gaslite">60.0%</div>' in detail
    passage = detail.index("Visit evil.example vitamin bone zzz")
    box = detail.rindex('<div class="passage adversarial-passage">', 0, passage)
    assert '<span class="badge adversarial">' in detail[box:passage]
    assert client_for(user).get(f"/audits/{audit.pk + 1000}/").status_code == 404


def test_another_users_audit_is_404(client_for, user, other_user, lineage):
    from embedhub.audits.models import RobustnessAudit

    audit = RobustnessAudit.objects.create(
        owner=user,
        index=lineage["old"],
        model_version=lineage["base"],
        concept="c",
        message="m",
    )
    assert client_for(other_user).get(f"/audits/{audit.pk}/").status_code == 404


# ------------------------------------------------------------------ the corpus page's job forms


class _FormFields(HTMLParser):
    """The fields a browser would submit for the form with a given id, with their defaults."""

    def __init__(self, form_id: str):
        super().__init__()
        self.form_id, self.inside, self.fields, self.action = form_id, False, {}, None
        self._select = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and attrs.get("id") == self.form_id:
            self.inside, self.action = True, attrs["action"]
        elif not self.inside:
            return
        elif tag == "input" and attrs.get("name") and attrs.get("type") != "checkbox":
            self.fields[attrs["name"]] = attrs.get("value", "")
        elif tag == "select":
            self._select = attrs["name"]
        elif (
            tag == "option"
            and self._select
            and (self._select not in self.fields or "selected" in attrs)
        ):
            self.fields[self._select] = attrs.get("value", "")

    def handle_endtag(self, tag):
        if tag == "form" and self.inside:
            self.inside = False
        elif tag == "select":
            self._select = None


def _form(html: str, form_id: str) -> tuple[str, dict]:
    parser = _FormFields(form_id)
    parser.feed(html)
    assert parser.action, f"no form #{form_id} on the page"
    return parser.action, parser.fields


@pytest.fixture
def ready_corpus(user):
    """A corpus with documents, a judged query set about one concept, and a built index of
    the real base model (no vectors needed: the preparers only check, they do not run)."""
    from embedhub.evaluation.models import Qrel, Query, QuerySet
    from embedhub.vectors.models import VectorIndex
    from embedhub.vectors.services import index_activate, index_create

    corpus = CorpusFactory(owner=user, name="forms")
    docs = DocumentFactory.create_batch(6, corpus=corpus)
    version = ModelVersionFactory(version=1)
    index = index_create(owner=user, corpus=corpus, model_version=version)
    VectorIndex.objects.filter(pk=index.pk).update(state=VectorIndex.State.READY)
    index_activate(index=VectorIndex.objects.get(pk=index.pk))
    ModelVersionFactory(version=2, parent=version)  # what a reindex moves the corpus to
    qs = QuerySet.objects.create(owner=user, corpus=corpus, name="test")
    for i, doc in enumerate(docs):
        Query.objects.create(query_set=qs, external_id=f"q{i}", text=f"vitamin question {i}")
        Qrel.objects.create(
            query_set=qs, query_external_id=f"q{i}", document_external_id=doc.external_id
        )
    return corpus


@pytest.mark.parametrize(
    "form_id,kind,extra",
    [
        ("embed-form", "embed", {}),
        ("evaluate-form", "evaluate", {}),
        ("finetune-form", "finetune", {}),
        ("reindex-form", "reindex", {}),
        ("audit-form", "audit", {"keyword": "vitamin", "message": "Visit evil.example"}),
    ],
)
def test_corpus_page_forms_submit_jobs_their_preparers_accept(
    client_for, user, ready_corpus, form_id, kind, extra
):
    """The forms as rendered, with their defaults, are valid params for each job kind."""
    client = client_for(user)
    page = client.get(f"/corpora/{ready_corpus.pk}/").content.decode()
    action, fields = _form(page, form_id)
    assert fields["kind"] == kind
    response = client.post(action, {**fields, **extra})
    job = Job.objects.get(owner=user, kind=kind)
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.pk}/"
    assert job.corpus_id == ready_corpus.pk


# ------------------------------------------------------------------ job forms: typing and errors


def _corpus_form(client, corpus, form_id: str) -> tuple[str, dict]:
    return _form(client.get(f"/corpora/{corpus.pk}/").content.decode(), form_id)


def _tag(html: str, element_id: str) -> str:
    """The start tag of the element with `element_id`."""
    at = html.index(f'id="{element_id}"')
    return html[html.rindex("<", 0, at) : html.index(">", at) + 1]


def _after(html: str, element_id: str, closing: str = "") -> str:
    """The page right after the element's start tag (or after `closing`, for a select)."""
    at = html.index(f'id="{element_id}"')
    end = html.index(closing, at) + len(closing) if closing else html.index(">", at) + 1
    return html[end:].lstrip()


def _form_html(html: str, form_id: str) -> str:
    start = html.index(f'id="{form_id}"')
    return html[start : html.index("</form>", start)]


def test_form_params_nest_dotted_names_and_keep_every_value_a_string():
    from dashboard.views import _form_params

    values = {
        "corpus": "3",
        "config.epochs": "2",
        "config.lr": "",
        "gate": "x",
        "gate.tolerance": "0.5",
    }
    assert _form_params(values) == {
        "corpus": "3",
        "config": {"epochs": "2"},  # an empty field is left out: the kind's default applies
        "gate": {"tolerance": "0.5"},  # a dotted name wins over a plain one, never a 500
    }


def test_submission_errors_are_keyed_by_the_forms_input_names():
    from dashboard.views import _form_errors
    from embedhub.core.errors import ApplicationError, Conflict

    fields = {"params.config.lr": ["must be a number"], "params": ["give one source"]}
    serializer = ApplicationError("params.config.lr: must be a number", details={"fields": fields})
    assert _form_errors(serializer) == {"config.lr": ["must be a number"], "": ["give one source"]}
    service = ApplicationError(
        "params.model_version: none newer", details={"field": "params.model_version"}
    )
    assert _form_errors(service) == {"model_version": ["none newer"]}
    assert _form_errors(Conflict("already indexed")) == {"": ["already indexed"]}


def _picked(value, like):
    """`value` cut down to the keys of `like`, with exact types: 1 == True cannot pass."""
    if isinstance(like, dict):
        return {key: _picked(value[key], item) for key, item in like.items()}
    return (type(value).__name__, value)


@pytest.mark.parametrize(
    "form_id,kind,posted,expected",
    [
        (
            "evaluate-form",
            "evaluate",
            {"k": "12", "exclude_self": "true"},
            {"k": 12, "exclude_self": True},
        ),
        (
            "finetune-form",
            "finetune",
            {"config.epochs": "3", "config.lr": "1e-5"},  # an exponent: no regex guessed that
            {"config": {"epochs": 3, "lr": 1e-5}},
        ),
        (
            "audit-form",
            "audit",
            {"keyword": "vitamin", "message": "2024", "budget": "2", "held_in": "0.5"},
            {"message": "2024", "budget": 2, "held_in": 0.5},  # text that looks numeric stays text
        ),
        ("reindex-form", "reindex", {"gate.tolerance": "0.05"}, {"gate": {"tolerance": 0.05}}),
    ],
)
def test_job_form_strings_are_typed_by_the_kinds_serializer(
    client_for, user, ready_corpus, form_id, kind, posted, expected
):
    client = client_for(user)
    action, fields = _corpus_form(client, ready_corpus, form_id)
    if "gate.query_set" in fields:  # choose a gate, as a user would in its select
        fields["gate.query_set"] = str(ready_corpus.query_sets.get().pk)
    response = client.post(action, {**fields, **posted})
    job = Job.objects.get(owner=user, kind=kind)
    assert response["Location"] == f"/jobs/{job.pk}/"
    assert _picked(job.params, expected) == _picked(expected, expected)


def test_job_form_error_is_shown_next_to_its_field(client_for, user, ready_corpus):
    client = client_for(user)
    action, fields = _corpus_form(client, ready_corpus, "finetune-form")
    response = client.post(action, {**fields, "config.epochs": "0"}, follow=True)
    page = response.content.decode()
    assert response.redirect_chain[-1][0] == f"/corpora/{ready_corpus.pk}/"
    assert not Job.objects.filter(owner=user).exists()
    # The message sits right under the epochs input, which keeps the refused value.
    assert _after(page, "ft-epochs").startswith(
        '<div class="field-error" id="finetune-config-epochs-error">'
        "must be an integer between 1 and 100, not 0</div>"
    )
    epochs = _tag(page, "ft-epochs")
    assert 'value="0"' in epochs and 'aria-invalid="true"' in epochs
    assert 'aria-describedby="finetune-config-epochs-error"' in epochs
    assert "Could not start the finetune job: params.config.epochs" in page  # the flash stays
    # Only the submitted form is marked, and only once: a reload shows clean forms.
    assert page.count('class="field-error') == 1
    assert 'class="field-error' not in client.get(f"/corpora/{ready_corpus.pk}/").content.decode()


def test_job_form_errors_name_every_bad_field_and_refill_the_rest(client_for, user, ready_corpus):
    client = client_for(user)
    action, fields = _corpus_form(client, ready_corpus, "audit-form")
    posted = {**fields, "keyword": "vit<amin", "message": "Visit", "budget": "lots"}
    page = client.post(action, {**posted, "iterations": "-1"}, follow=True).content.decode()
    assert _after(page, "au-budget").startswith(
        '<div class="field-error" id="audit-budget-error">must be an integer</div>'
    )
    assert _after(page, "au-iter").startswith(
        '<div class="field-error" id="audit-iterations-error">'
        "must be an integer between 0 and 1000, not -1</div>"
    )
    keyword = _tag(page, "au-keyword")
    assert 'value="vit&lt;amin"' in keyword and "aria-invalid" not in keyword  # refilled, escaped
    query_set = ready_corpus.query_sets.get()
    assert f'<option value="{query_set.pk}" selected>' in _form_html(page, "audit-form")
    assert not Job.objects.filter(owner=user).exists()


@pytest.mark.parametrize(
    "form_id,posted,shown",
    [
        # About the params as a whole: no source of pairs (the select was emptied).
        ("finetune-form", {"query_set": ""}, "give exactly one source of training pairs"),
        # A field the form has no input for is named in front of its message.
        ("reindex-form", {"gate.tolerance": "0.5"}, "gate.tolerance: must be a number between"),
    ],
)
def test_job_form_error_without_an_input_is_shown_atop_the_form(
    client_for, user, ready_corpus, form_id, posted, shown
):
    client = client_for(user)
    action, fields = _corpus_form(client, ready_corpus, form_id)
    page = client.post(action, {**fields, **posted}, follow=True).content.decode()
    form = _form_html(page, form_id)
    top = form[: form.index('class="field"')]  # before the form's first field
    assert f'<div class="field-error form-error" role="alert">{shown}' in top
    assert not Job.objects.filter(owner=user).exists()


def test_a_nested_field_error_is_shown_under_its_input(client_for, user, ready_corpus):
    """A tolerance without a gate: "gate.query_set" is missing, under the gate's select."""
    client = client_for(user)
    action, fields = _corpus_form(client, ready_corpus, "reindex-form")
    page = client.post(action, {**fields, "gate.tolerance": "0.01"}, follow=True).content.decode()
    assert _after(page, "ri-gate", "</select>").startswith(
        '<div class="field-error" id="reindex-gate-query_set-error">required</div>'
    )


def test_job_form_errors_are_not_shown_on_another_page(client_for, user, ready_corpus):
    client = client_for(user)
    action, fields = _corpus_form(client, ready_corpus, "finetune-form")
    client.post(action, {**fields, "config.epochs": "0", "next": "/corpora/"})
    page = client.get(f"/corpora/{ready_corpus.pk}/").content.decode()
    assert 'class="field-error' not in page and 'value="1"' in _tag(page, "ft-epochs")
