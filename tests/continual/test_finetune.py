"""The finetune job on the real all-MiniLM-L6-v2 at tiny settings, and QDC search with its child."""

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings

from embedhub.core.errors import ApplicationError, NotFound
from embedhub.corpora.models import Document
from embedhub.evaluation.models import Qrel, Query, QuerySet
from embedhub.jobs.services import job_cancel, job_retry
from embedhub.jobs.submission import job_params_prepare, job_submit_checked
from embedhub.registry.models import ModelVersion
from tests.conftest import wait_for_job, wait_until
from tests.factories import CorpusFactory, EmbeddingModelFactory, ModelVersionFactory

# Topics all-MiniLM-L6-v2 has no reason to know well: made-up names and places.
TOPICS = [
    ("zorbl", "Zorbl is a blue fruit grown on the terraces of Kelvara."),
    ("quenta", "Quenta is the river festival held each spring in Ostrava Vale."),
    ("frimble", "A frimble is a three-stringed instrument carved from pine."),
    ("drax", "Drax syndrome makes the leaves of olive trees curl and fall."),
    ("vellum", "Vellum Street is where the tram depot of Norrin stands."),
    ("pylar", "The pylar engine burns compressed straw to pump water."),
    ("tessik", "Tessik is a card game played with sixty painted tiles."),
    ("morrow", "Morrow bread is baked with barley and smoked salt."),
    ("ulvane", "Ulvane glaciers retreat three metres every summer."),
    ("kessa", "Kessa dancers wear copper bells on their ankles."),
    ("brine", "Brine hawks nest on the cliffs above the salt flats."),
    ("oskel", "The Oskel pass closes when snow reaches the second marker."),
]


def _documents(corpus):
    rows = []
    for i, (_, text) in enumerate(TOPICS):
        digest = hashlib.sha256(text.encode()).hexdigest()
        rows.append(
            Document(corpus=corpus, external_id=f"t{i}", title="", text=text, content_hash=digest)
        )
    Document.objects.bulk_create(rows)


def _query_set(owner, corpus) -> QuerySet:
    qs = QuerySet.objects.create(owner=owner, corpus=corpus, name="train")
    Query.objects.bulk_create(
        Query(query_set=qs, external_id=f"q{i}", text=f"what is {word}?")
        for i, (word, _) in enumerate(TOPICS)
    )
    Qrel.objects.bulk_create(
        Qrel(query_set=qs, query_external_id=f"q{i}", document_external_id=f"t{i}")
        for i in range(len(TOPICS))
    )
    return qs


def _embedded(user, corpus, version):
    """The parent's index of the corpus, built by a worker: what the finetune mines from."""
    embed = job_submit_checked(
        user=user, kind="embed", params={"corpus": corpus.pk, "model_version": version.pk}
    )[0]
    assert wait_for_job(embed.pk).status == "succeeded"
    return embed


CONFIG = {
    "max_steps": 3,
    "batch_size": 4,
    "max_tokens": 64,
    "negatives_per_query": 2,
    "checkpoint_every": 1,
    "lr": 5e-5,
    "seed": 0,
    "warmup_steps": 0,
}


@pytest.mark.django_db(transaction=True)
def test_finetune_registers_a_child_with_drift_and_search_compensates(
    api, other_api, user, start_worker
):
    parent = ModelVersionFactory()  # the real bundled model
    corpus = CorpusFactory(owner=user, name="topics")
    _documents(corpus)
    query_set = _query_set(user, corpus)
    start_worker("ft")
    embed = _embedded(user, corpus, parent)

    job, _ = job_submit_checked(
        user=user,
        kind="finetune",
        params={"parent": parent.pk, "query_set": query_set.pk, "config": CONFIG},
    )
    assert job.params["corpus"] == corpus.pk  # negatives are mined from the parent's index
    wait_until(
        lambda: job.__class__.objects.get(pk=job.pk).progress_done >= 1,
        timeout=120,
        interval=0.05,
        what="first training step",
    )
    job_cancel(job=job)
    job = wait_for_job(job.pk)
    assert job.status == "cancelled"
    assert not ModelVersion.objects.filter(parent=parent).exists()  # a cancelled run: no child
    job_dir = Path(settings.ARTIFACT_ROOT) / "jobs" / str(job.pk)
    assert (job_dir / "checkpoint" / "checkpoint.pt").exists()  # what a retry resumes from
    assert (job_dir / "pairs.known.json").exists()  # the retry masks what this attempt did
    pairs = [json.loads(line) for line in (job_dir / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 12 and all(len(p["negatives"]) == 2 for p in pairs)
    assert all(p["positive"] not in p["negatives"] for p in pairs)

    job = wait_for_job(job_retry(job=job).pk, timeout=300)
    assert job.status == "succeeded", job.error
    child = ModelVersion.objects.get(pk=job.result["model_version"])
    assert child.parent_id == parent.pk and child.version == parent.version + 1
    assert child.status == "ready" and child.dimension == 384
    assert (child.owner, child.visibility) == (user, "private")  # until staff publish it
    assert other_api.get(f"/api/v1/model-versions/{child.pk}/").status_code == 404
    artifact = Path(child.artifact_path)
    assert artifact == Path(settings.ARTIFACT_ROOT).resolve() / "models" / parent.model.name / (
        f"v{child.version}"
    )
    assert (artifact / "model.safetensors").exists() and (artifact / "tokenizer.json").exists()
    drift = np.asarray(child.drift)
    assert drift.shape == (384,) and child.drift_norm > 0
    assert child.drift_norm == pytest.approx(float(np.linalg.norm(drift)), rel=1e-5)
    assert [p["step"] for p in child.loss_curve] == [1, 2, 3]
    assert job.result["steps"] == 3
    assert job.result["final_loss"] == child.loss_curve[-1]["loss"]
    assert child.provenance["query_set"] == query_set.pk and child.provenance["pairs"] == 12
    assert child.provenance["negatives_index"] == embed.params["index"]
    assert child.training_params["max_steps"] == 3 and child.training_params["parent"] == parent.pk
    assert not (job_dir / "checkpoint").exists()  # freed once the child is registered

    # Search the parent's index with the child's queries: QDC by default, none on request.
    body = {"corpus": corpus.pk, "query": "what is zorbl?", "model_version": child.pk, "k": 3}
    qdc = api.post("/api/v1/search/", body, format="json")
    assert qdc.status_code == 200, qdc.content
    assert qdc.json()["compensation"] == "qdc" and qdc.json()["index"] == embed.params["index"]
    raw = api.post("/api/v1/search/", {**body, "compensation": "none"}, format="json").json()
    assert raw["compensation"] == "none"
    assert qdc.json()["results"][0]["score"] != pytest.approx(raw["results"][0]["score"], abs=1e-6)

    # Same weights, but another lineage: not a descendant of the index's version.
    stranger = ModelVersionFactory(model=EmbeddingModelFactory(name="unrelated"))
    refused = api.post("/api/v1/search/", {**body, "model_version": stranger.pk}, format="json")
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "incompatible_version"
    assert "does not descend" in refused.json()["error"]["message"]


@pytest.mark.django_db(transaction=True)
def test_a_short_run_draws_its_pairs_but_every_judgement_keeps_out_of_the_negatives(
    user, start_worker
):
    parent = ModelVersionFactory()
    corpus = CorpusFactory(owner=user, name="topics")
    _documents(corpus)
    query_set = _query_set(user, corpus)
    # Each query is judged relevant to the next topic's document too: 24 judgements.
    Qrel.objects.bulk_create(
        Qrel(query_set=query_set, query_external_id=f"q{i}", document_external_id=f"t{j}")
        for i in range(len(TOPICS))
        for j in [(i + 1) % len(TOPICS)]
    )
    start_worker("ft-drawn")
    _embedded(user, corpus, parent)
    job, _ = job_submit_checked(
        user=user,
        kind="finetune",
        params={"parent": parent.pk, "query_set": query_set.pk, "config": CONFIG},
    )
    job = wait_for_job(job.pk, timeout=300)
    assert job.status == "succeeded", job.error
    child = ModelVersion.objects.get(pk=job.result["model_version"])
    # 3 steps of 4 pairs reach 12 of the 24 judgements: only those are mined and trained on.
    assert (child.provenance["judgements"], child.provenance["pairs"]) == (24, 12)
    job_dir = Path(settings.ARTIFACT_ROOT) / "jobs" / str(job.pk)
    pairs = [json.loads(line) for line in (job_dir / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 12
    judged = {
        f"what is {TOPICS[i][0]}?": {TOPICS[i][1], TOPICS[(i + 1) % len(TOPICS)][1]}
        for i in range(len(TOPICS))
    }
    drawn = {(p["query"], p["positive"]) for p in pairs}
    # Some queries train on one of their two judgements; the other is never a negative.
    assert any(len({d for q, d in drawn if q == query}) == 1 for query in judged)
    for p in pairs:
        assert len(p["negatives"]) == 2
        assert not judged[p["query"]] & set(p["negatives"])  # not even the undrawn judgement
    # Δ and the adapter fit on every training query, drawn or not (a fifth probe the fit).
    adapter = child.adapter
    assert adapter["queries"] + adapter["probe_queries"] == len(TOPICS)


@pytest.mark.django_db
def test_training_set_upload_validates_lines_and_feeds_a_finetune_job(api, user, other_user):
    parent = ModelVersionFactory()
    bad = io.BytesIO(b'{"query": "a", "positive": "b"}\n\n{"query": "c"}\n')
    bad.name = "pairs.jsonl"
    response = api.post("/api/v1/training-sets/", {"file": bad}, format="multipart")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["details"]["line"] == 3 and error["details"]["field"] == "positive"
    assert "pairs.jsonl line 3" in error["message"]

    good = io.BytesIO(
        b'{"query": "a", "positive": "b", "negatives": ["x"]}\n{"query": "c", "positive": "d"}\n'
    )
    good.name = "pairs.jsonl"
    response = api.post("/api/v1/training-sets/", {"file": good}, format="multipart")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body == {
        "training_set": body["training_set"],
        "pairs": 2,
        "queries": 2,
        "with_negatives": 1,
    }

    params, corpus = job_params_prepare(
        kind="finetune",
        user=user,
        params={"parent": parent.pk, "training_set": body["training_set"]},
    )
    assert corpus is None and Path(params["pairs_path"]).exists()
    assert params["config"] == {}
    with pytest.raises(NotFound):  # someone else's upload
        job_params_prepare(
            kind="finetune",
            user=other_user,
            params={"parent": parent.pk, "training_set": body["training_set"]},
        )
    with pytest.raises(ApplicationError, match="only staff"):
        job_params_prepare(
            kind="finetune", user=user, params={"parent": parent.pk, "pairs_path": "/etc/hosts"}
        )
    with pytest.raises(ApplicationError, match="params.config.lrr: unknown field"):
        job_params_prepare(
            kind="finetune",
            user=user,
            params={
                "parent": parent.pk,
                "config": {"lrr": 1},
                "training_set": body["training_set"],
            },
        )
    with pytest.raises(ApplicationError, match="params.config.batch_size"):
        job_params_prepare(
            kind="finetune",
            user=user,
            params={
                "parent": parent.pk,
                "config": {"batch_size": 0},
                "training_set": body["training_set"],
            },
        )
    other_corpus = CorpusFactory(owner=other_user)
    other_qs = QuerySet.objects.create(owner=other_user, corpus=other_corpus, name="x")
    response = api.post(
        "/api/v1/jobs/",
        {"kind": "finetune", "params": {"parent": parent.pk, "query_set": other_qs.pk}},
        format="json",
    )
    assert response.status_code == 404


@pytest.mark.django_db
def test_training_length_is_bounded_once_the_pairs_are_counted(api, user):
    parent = ModelVersionFactory()
    lines = b"".join(b'{"query": "q%d", "positive": "p%d"}\n' % (i, i) for i in range(2001))
    upload = io.BytesIO(lines)
    upload.name = "pairs.jsonl"
    training_set = api.post("/api/v1/training-sets/", {"file": upload}, format="multipart")
    assert training_set.status_code == 201, training_set.content

    def prepare(**config):
        params = {"parent": parent.pk, "training_set": training_set.json()["training_set"]}
        return job_params_prepare(kind="finetune", user=user, params={**params, "config": config})

    # 100 epochs of 2,001 pairs in batches of 2: 1,001 steps each, 100,100 in all.
    with pytest.raises(ApplicationError) as refused:
        prepare(epochs=100, batch_size=2)
    assert refused.value.details["field"] == "params.config.epochs"
    assert "100,100 steps of batch_size 2 (2,001 pairs)" in refused.value.message
    assert "at most 100,000 steps" in refused.value.message
    # max_steps alone: the step bound is the field's own, the examples bound is checked here.
    with pytest.raises(ApplicationError, match="params.config.max_steps: must be an integer"):
        prepare(max_steps=100_001)
    with pytest.raises(ApplicationError) as refused:
        prepare(max_steps=5000, batch_size=1024)
    assert refused.value.details["field"] == "params.config.max_steps"
    assert "5,120,000 examples" in refused.value.message
    params, _ = prepare(epochs=99, batch_size=2)  # 99,099 steps: within the bounds
    assert params["config"] == {"epochs": 99, "batch_size": 2}
    params, _ = prepare(max_steps=3, temperature=0.05)  # the loss's temperature is a setting
    assert params["config"] == {"max_steps": 3, "temperature": 0.05}
