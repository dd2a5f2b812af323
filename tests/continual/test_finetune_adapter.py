"""The fine-tune fits a compensation adapter (real all-MiniLM-L6-v2, tiny settings) and
compensation="adapter" searches and evaluates the parent's index through it."""

from pathlib import Path

import numpy as np
import pytest
from django.urls import reverse

from embedhub.evaluation.models import EvalRun
from embedhub.jobs.submission import job_submit_checked
from embedhub.registry.models import ModelVersion
from tests.conftest import wait_for_job
from tests.continual.test_finetune import CONFIG, _documents, _query_set
from tests.factories import CorpusFactory, ModelVersionFactory
from workers.ml.adapter import Adapter


def _embed(user, corpus, version):
    job = job_submit_checked(
        user=user, kind="embed", params={"corpus": corpus.pk, "model_version": version.pk}
    )[0]
    assert wait_for_job(job.pk).status == "succeeded"
    return job.params["index"]


@pytest.mark.django_db(transaction=True)
def test_finetune_stores_an_adapter_and_adapter_compensation_searches_with_it(
    api, other_api, user, other_user, client, start_worker
):
    parent = ModelVersionFactory()  # the real bundled model
    corpus = CorpusFactory(owner=user, name="topics")
    _documents(corpus)
    query_set = _query_set(user, corpus)
    # Someone else's corpus indexed by the same parent: never sampled for this user's adapter.
    foreign = CorpusFactory(owner=other_user, name="theirs")
    _documents(foreign)
    start_worker("ft-adapter")
    index_id = _embed(user, corpus, parent)
    _embed(other_user, foreign, parent)

    job, _ = job_submit_checked(
        user=user,
        kind="finetune",
        params={
            "parent": parent.pk,
            "query_set": query_set.pk,
            "config": CONFIG,  # 3 steps of 4 reach all 12 pairs: none are left undrawn
        },
    )
    job = wait_for_job(job.pk, timeout=300)
    assert job.status == "succeeded", job.error
    child = ModelVersion.objects.get(pk=job.result["model_version"])

    # Stored with the version, beside its weights, with how it was chosen.
    assert Path(child.adapter_path).parent == Path(child.artifact_path)
    stored = Adapter.from_bytes(Path(child.adapter_path).read_bytes())
    assert stored.weight.shape == (384, 384)
    info = child.adapter
    assert info["method"] in ("procrustes", "ridge")
    # A fifth of the judged training queries is kept out of the fit to choose it by
    # retrieval (their positives searched among the sampled documents, mapped).
    assert info["probe_queries"] == 2 and 0 <= info["probe_mrr@10"] <= 1
    assert (info["queries"], info["documents"], info["corpora"]) == (10, 12, 1)
    assert info["pairs"] == 22 and 0 < info["held_out_pairs"] < 22
    assert info["fitted_on"] in ("all", "documents")
    assert -1 <= info["held_out_cosine"] <= 1 and "identity" in info["candidates"]
    assert job.result["adapter"]["method"] == info["method"]
    # Its corpus got an adapter of its own, into the index's version; the other account's
    # corpus (same parent) got none. Only the policy's query set is judged: no probe, and
    # the fine-tune trained on this corpus, so the ranking map serves alone.
    entry = info["per_corpus"][str(corpus.pk)]
    assert entry["target_version"] == parent.pk and entry["index"] == index_id
    assert (Path(child.artifact_path) / entry["file"]).is_file()
    assert entry["document_weight"] == 1.0 and entry["probe_query_sets"] == []
    assert entry["new_task"] is True and entry["blend_chosen_by"] == "task"
    assert (entry["documents"], entry["queries"]) == (12, 12)
    assert list(info["per_corpus"]) == [str(corpus.pk)]
    assert job.result["adapter"]["per_corpus"][str(corpus.pk)]["chosen"] == "blend@1"
    assert "candidates" not in job.result["adapter"]
    # Cheaper fine-tune: document targets read from the parent's index, top ranks skipped.
    assert child.provenance["distill_targets_from_index"] == 12
    assert child.provenance["negatives_skip_top"] == 3
    assert child.training_params["negatives_skip_top"] == 3

    detail = api.get(f"/api/v1/model-versions/{child.pk}/").json()
    assert detail["adapter"]["method"] == info["method"]
    page = client_page(client, user)
    assert f'adapter <strong class="adapter-method">{info["method"]}' in page
    assert "corpus-adapters" in page and "<strong>1</strong> corpus adapter<" in page

    # Search the parent's index with the child's queries through the adapter.
    body = {"index": index_id, "query": "what is zorbl?", "model_version": child.pk, "k": 3}
    adapted = api.post("/api/v1/search/", {**body, "compensation": "adapter"}, format="json")
    assert adapted.status_code == 200, adapted.content
    assert adapted.json()["compensation"] == "adapter"
    assert adapted.json()["adapter"] == "corpus"
    raw = api.post("/api/v1/search/", {**body, "compensation": "none"}, format="json").json()
    assert adapted.json()["results"][0]["score"] != pytest.approx(
        raw["results"][0]["score"], abs=1e-6
    )

    evaluate = job_submit_checked(
        user=user,
        kind="evaluate",
        params={
            "index": index_id,
            "query_set": query_set.pk,
            "model_version": child.pk,
            "compensation": "adapter",
        },
    )[0]
    evaluate = wait_for_job(evaluate.pk)
    assert evaluate.status == "succeeded", evaluate.error
    run = EvalRun.objects.get(pk=evaluate.result["eval_run"])
    assert run.compensation == "adapter" and run.params["compensation_requested"] == "adapter"
    assert np.isfinite(run.metrics["ndcg@10"])

    # A version on the path without an adapter: refused, like QDC without a drift vector.
    bare = ModelVersionFactory(
        model=parent.model,
        version=child.version + 1,
        parent=child,
        owner=user,
        drift=np.zeros(384, dtype=np.float32),
    )
    refused = api.post(
        "/api/v1/search/",
        {**body, "model_version": bare.pk, "compensation": "adapter"},
        format="json",
    )
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "no_adapter"
    response = api.post(
        "/api/v1/jobs/",
        {
            "kind": "evaluate",
            "params": {
                "index": index_id,
                "query_set": query_set.pk,
                "model_version": bare.pk,
                "compensation": "adapter",
            },
        },
        format="json",
    )
    assert response.status_code == 400, response.content
    assert "no compensation adapter" in response.json()["error"]["message"]
    bad = api.post("/api/v1/search/", {**body, "compensation": "adaptor"}, format="json")
    assert bad.status_code == 400
    # The other account cannot name the child at all.
    assert other_api.post("/api/v1/search/", body, format="json").status_code == 404


def client_page(client, user) -> str:
    client.force_login(user)
    response = client.get(reverse("dashboard:model-list"))
    assert response.status_code == 200
    return response.content.decode()
