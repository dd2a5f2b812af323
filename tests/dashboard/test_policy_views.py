"""Dashboard pages of serving policies: a corpus's policy with the candidates behind it,
evaluation charts per corpus and query set, and the forgetting matrix read from EvalRuns."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from embedhub.evaluation.models import EvalRun, Qrel, QuerySet
from embedhub.jobs.models import Job
from embedhub.vectors.compensation import COMPENSATIONS
from embedhub.vectors.models import ServingPolicy
from tests.dashboard.test_views import _form
from tests.factories import CorpusFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def client_for(client):
    def login(user):
        client.force_login(user)
        return client

    return login


def _run(user, qs, index, version, compensation, score) -> EvalRun:
    return EvalRun.objects.create(
        owner=user,
        query_set=qs,
        index=index,
        model_version=version,
        compensation=compensation,
        metrics={"ndcg@10": score, "recall@100": score + 0.1},
        n_queries=5,
    )


def test_corpus_page_shows_the_policy_and_the_numbers_behind_it(client_for, user, lineage):
    corpus, old, child = lineage["corpus"], lineage["old"], lineage["child"]
    runs = lineage["runs"]
    job = Job.objects.create(owner=user, kind="policy", status="succeeded")
    candidates = [
        {
            "name": "current",
            "status": "evaluated",
            "index": old.pk,
            "model_version": lineage["base"].pk,
            "compensation": "none",
            "eval_run": runs["none"].pk,
            "metric": 0.41,
            "chosen": False,
        },
        {
            "name": "old_index_qdc",
            "status": "evaluated",
            "index": old.pk,
            "model_version": child.pk,
            "compensation": "qdc",
            "eval_run": runs["qdc"].pk,
            "metric": 0.52,
            "chosen": True,
        },
        {"name": "reindex", "status": "skipped", "reason": "reindex not allowed", "chosen": False},
    ]
    ServingPolicy.objects.create(
        corpus=corpus,
        query_version=child,
        compensation="qdc",
        decided_by=job,
        decision={
            "candidates": candidates,
            "chosen": "old_index_qdc",
            "metric": "ndcg@10",
            "reason": "old_index_qdc beats the current policy by +0.1100 > 0.01",
        },
    )
    body = client_for(user).get(f"/corpora/{corpus.pk}/").content.decode()
    assert 'id="serving-policy"' in body and 'id="policy-form"' in body
    assert "beats the current policy by +0.1100" in body
    assert "✓ old_index_qdc" in body and "skipped: reindex not allowed" in body
    assert f"job #{job.pk}" in body


def test_corpus_page_without_a_policy_says_it_serves_the_default(client_for, user, lineage):
    body = client_for(user).get(f"/corpora/{lineage['corpus'].pk}/").content.decode()
    assert "the default: the active index with its own version" in body


def test_the_policy_form_submits_a_policy_job(client_for, user, lineage):
    corpus = lineage["corpus"]
    client = client_for(user)
    page = f"/corpora/{corpus.pk}/"
    response = client.post(
        "/jobs/start/",
        {"kind": "policy", "corpus": corpus.pk, "allow_reindex": "maybe", "next": page},
    )
    assert response["Location"] == page  # refused: the form shows why
    assert "allow_reindex" in client.get(page).content.decode()
    assert not Job.objects.filter(kind="policy").exists()


def test_the_settings_form_changes_what_policy_jobs_and_evaluations_follow(
    client_for, user, other_user, lineage
):
    corpus = lineage["corpus"]
    client = client_for(user)
    page = client.get(f"/corpora/{corpus.pk}/").content.decode()
    # No policy row yet: the form shows the defaults a first policy job would use.
    assert (
        'name="tolerance" id="policy-tolerance" min="0" max="1" step="0.001" value="0.01"' in page
    )
    url = f"/corpora/{corpus.pk}/policy/"
    form = {"metric": "recall@100", "tolerance": "0.002", "exclude_self": "on"}
    assert client.post(url, form).status_code == 302
    policy = ServingPolicy.objects.get(corpus=corpus)
    assert (policy.metric, policy.tolerance) == ("recall@100", 0.002)
    assert policy.exclude_self is True and policy.allow_reindex is False  # unticked: false
    page = client.get(f"/corpora/{corpus.pk}/").content.decode()
    assert 'id="policy-setting-exclude-self" checked' in page
    # Out of bounds: refused, named, and nothing changes.
    response = client.post(url, {"metric": "recall@100", "tolerance": "7"}, follow=True)
    assert "tolerance:" in response.content.decode()
    assert ServingPolicy.objects.get(corpus=corpus).tolerance == 0.002
    # Another account cannot change it.
    assert client_for(other_user).post(url, {"metric": "ndcg@10"}).status_code == 404
    assert ServingPolicy.objects.get(corpus=corpus).metric == "recall@100"


def test_evaluation_charts_keep_same_named_query_sets_of_two_corpora_apart(
    client_for, user, lineage
):
    other = CorpusFactory(owner=user, name="second-corpus")
    for corpus in (lineage["corpus"], other):
        qs = QuerySet.objects.create(owner=user, corpus=corpus, name="test")
        _run(user, qs, lineage["old"], lineage["base"], "none", 0.3 if corpus == other else 0.6)
    charts = client_for(user).get("/evaluations/").context["charts"]
    groups = {(c["corpus"], c["query_set"]): c for c in charts}
    assert set(groups) >= {("lineage-corpus", "test"), ("second-corpus", "test")}
    first = groups[("lineage-corpus", "test")]["datasets"][0]["data"]
    second = groups[("second-corpus", "test")]["datasets"][0]["data"]
    assert first == [0.6] and second == [0.3]


def test_forgetting_matrix_renders_each_version_and_option_with_the_choice_marked(
    client_for, user, other_user, lineage
):
    base, child, old, new = lineage["base"], lineage["child"], lineage["old"], lineage["new"]
    qs = QuerySet.objects.create(owner=user, corpus=lineage["corpus"], name="test")
    own = _run(user, qs, old, base, "none", 0.61)
    qdc = _run(user, qs, old, child, "qdc", 0.63)
    reindexed = _run(user, qs, new, child, "none", 0.66)
    Job.objects.create(
        owner=user,
        kind="policy",
        status="succeeded",
        result={
            "corpora": [
                {
                    "candidates": [
                        {"eval_run": reindexed.pk, "chosen": True},
                        {"eval_run": qdc.pk, "chosen": False},
                    ]
                }
            ]
        },
    )
    response = client_for(user).get(f"/evaluations/forgetting/?version={child.pk}")
    matrix = response.context["matrix"]
    cells = {(row["version"].pk, row["option"]): row["cells"] for row in matrix["rows"]}
    column = [t.pk for t in matrix["tasks"]].index(qs.pk)
    assert cells[(base.pk, "old_index_none")][column]["eval_run"] == own.pk
    assert cells[(child.pk, "old_index_qdc")][column]["eval_run"] == qdc.pk
    assert cells[(child.pk, "reindexed")][column] == {
        "eval_run": reindexed.pk,
        "metrics": reindexed.metrics,
        "chosen": True,
    }
    assert cells[(child.pk, "old_index_adapter")][column]["eval_run"] is None
    body = response.content.decode()
    assert 'id="forgetting-table"' in body and "✓ 0.6600" in body
    # Rows read as serving options; the root's only row is its own index.
    assert ">its own index</td>" in body and ">old index + QDC</td>" in body
    # Another account sees none of it.
    response = client_for(other_user).get(f"/evaluations/forgetting/?version={child.pk}")
    assert response.status_code == 200
    assert response.context["matrix"]["tasks"] == []


def test_forgetting_matrix_shades_each_change_from_the_root_and_names_what_trained_it(
    client_for, user, lineage
):
    base, child, old, new = lineage["base"], lineage["child"], lineage["old"], lineage["new"]
    corpus = lineage["corpus"]
    qs = QuerySet.objects.create(owner=user, corpus=corpus, name="test")
    train = QuerySet.objects.create(owner=user, corpus=corpus, name="train")
    child.provenance = {"source": "query_set", "query_set": train.pk, "corpus": corpus.pk}
    child.save(update_fields=["provenance"])
    _run(user, qs, old, base, "none", 0.61)
    _run(user, qs, old, child, "qdc", 0.6001)
    _run(user, qs, new, child, "none", 0.71)
    response = client_for(user).get(f"/evaluations/forgetting/?version={child.pk}")
    rows = {(row["version"].pk, row["option"]): row for row in response.context["rows"]}
    column = [t.pk for t in response.context["matrix"]["tasks"]].index(qs.pk)
    root = rows[(base.pk, "old_index_none")]
    assert root["trained_on"] == "" and root["cells"][column]["delta"] == ""
    reindexed = rows[(child.pk, "reindexed")]
    assert reindexed["trained_on"] == "lineage-corpus · train"
    cell = reindexed["cells"][column]
    assert (cell["delta"], cell["trained"]) == ("+0.1000", True)
    assert cell["shade"] == "background: rgba(43, 138, 62, 0.40)"  # beyond ±0.05: full
    qdc = rows[(child.pk, "old_index_qdc")]["cells"][column]
    assert qdc["delta"] == "-0.0099" and qdc["shade"].startswith("background: rgba(201, 42, 42,")
    body = response.content.decode()
    assert '<small class="fm-delta">+0.1000</small>' in body and 'data-trained="1"' in body


def test_a_shared_version_trained_on_another_accounts_data_names_none_of_it(
    user, other_user, lineage
):
    from embedhub.continual.selectors import version_training_sources

    child, corpus = lineage["child"], lineage["corpus"]
    train = QuerySet.objects.create(owner=user, corpus=corpus, name="secret-train")
    child.provenance = {"source": "query_set", "query_set": train.pk, "corpus": corpus.pk}
    child.save(update_fields=["provenance"])
    mine = version_training_sources(user=user, versions=[lineage["base"], child])
    assert mine[child.pk] == {"label": "lineage-corpus · secret-train", "corpus_id": corpus.pk}
    assert mine[lineage["base"].pk] == {"label": "", "corpus_id": None}
    theirs = version_training_sources(user=other_user, versions=[child])
    assert theirs[child.pk] == {"label": "another account's judgements", "corpus_id": None}


def test_forgetting_matrix_page_renders_empty(client_for, other_user):
    response = client_for(other_user).get("/evaluations/forgetting/")
    assert response.status_code == 200 and "No matrix yet" in response.content.decode()


# ------------------------------------------------------------------ search and evaluate follow it


@pytest.fixture
def qdc_policy(lineage):
    """The lineage corpus served by the child's queries on the old index, with QDC."""
    child = lineage["child"]
    child.drift = [0.05] * 8  # the fake:8 indexes' width
    child.save(update_fields=["drift"])
    return ServingPolicy.objects.create(
        corpus=lineage["corpus"], query_version=child, compensation="qdc"
    )


def _select(html: str, select_id: str) -> str:
    start = html.index(f'id="{select_id}"')
    return html[start : html.index("</select>", start)]


def _selected(html: str, select_id: str) -> str | None:
    found = re.findall(r'<option value="([^"]*)" selected', _select(html, select_id))
    return found[0] if found else None


def _options(html: str, select_id: str) -> list[str]:
    return re.findall(r'<option value="([^"]*)"', _select(html, select_id))


def test_search_page_offers_the_policy_and_every_compensation_of_the_server(
    client_for, user, lineage
):
    body = client_for(user).get(f"/search/?corpus={lineage['corpus'].pk}").content.decode()
    assert _options(body, "s-comp") == ["", *COMPENSATIONS]
    assert "adapter" in COMPENSATIONS
    assert ">follow the corpus's serving policy (an index: auto)</option>" in body


def test_a_default_search_from_the_page_follows_the_policy_and_says_what_it_used(
    client_for, user, lineage, qdc_policy
):
    client = client_for(user)
    page = client.get("/search/").content.decode()
    search_url = reverse("search")
    assert f'searchUrl: "{search_url}"' in page  # the page posts to the API's search
    corpus = lineage["corpus"]
    # What the page's script posts with every choice left at its default.
    query = {"corpus": corpus.pk, "query": "anything", "k": 3, "exact": True}
    body = client.post(search_url, query, content_type="application/json").json()
    used = (body["index"], body["model_version"], body["compensation"], body["policy"])
    assert used == (lineage["old"].pk, lineage["child"].pk, "qdc", qdc_policy.pk)
    # A compensation chosen on the page overrides the policy's, field by field.
    body = client.post(
        search_url, {**query, "compensation": "none"}, content_type="application/json"
    ).json()
    assert (body["model_version"], body["compensation"]) == (lineage["child"].pk, "none")


def test_the_evaluate_form_follows_the_serving_policy_unless_overridden(
    client_for, user, lineage, qdc_policy
):
    client = client_for(user)
    corpus, old, new, child = lineage["corpus"], lineage["old"], lineage["new"], lineage["child"]
    page = client.get(f"/corpora/{corpus.pk}/").content.decode()
    assert _options(page, "eval-comp") == ["", *COMPENSATIONS]
    assert _options(page, "eval-index")[0] == ""  # no index to name: the policy's
    action, fields = _form(page, "evaluate-form")
    assert (fields["corpus"], fields["index"], fields["model_version"]) == (str(corpus.pk), "", "")
    assert fields["compensation"] == ""

    client.post(action, fields)
    job = Job.objects.get(kind="evaluate")
    chosen = [job.params[key] for key in ("index", "model_version", "compensation", "policy")]
    assert chosen == [old.pk, child.pk, "qdc", qdc_policy.pk]

    client.post(action, {**fields, "index": new.pk, "compensation": "none"})
    job = Job.objects.filter(kind="evaluate").exclude(pk=job.pk).get()
    assert [job.params[key] for key in ("index", "model_version", "compensation")] == [
        new.pk,
        child.pk,  # the named index's own version
        "none",
    ]
    assert "policy" not in job.params


def test_the_evaluate_form_starts_on_the_query_set_a_policy_job_measures(client_for, user, lineage):
    client, corpus = client_for(user), lineage["corpus"]
    page = client.get(f"/corpora/{corpus.pk}/").content.decode()
    assert _selected(page, "eval-qs") is None  # no judged set yet: the first listed
    # "train" is listed first (newer), but a version fine-tuned on it would flatter itself.
    judged = {}
    for name in ("test", "train"):
        judged[name] = QuerySet.objects.create(owner=user, corpus=corpus, name=name)
        Qrel.objects.create(query_set=judged[name], query_external_id="q", document_external_id="d")
    page = client.get(f"/corpora/{corpus.pk}/").content.decode()
    assert _options(page, "eval-qs")[0] == str(judged["train"].pk)
    assert _selected(page, "eval-qs") == str(judged["test"].pk)
