"""Model versions have an owner and a visibility: a fine-tuned child is private to the
fine-tune's owner (and staff) until staff publish it; every list, detail, job param and
search answers 404 for a version the caller may not see; the default model for new
indexes is a staff setting that nobody's fine-tune moves."""

from __future__ import annotations

import importlib
import shutil

import numpy as np
import pytest
from django.apps import apps as django_apps
from django.test import Client

from embedhub.evaluation.models import Qrel, Query, QuerySet
from embedhub.jobs.models import Job
from embedhub.registry.models import ModelVersion, RegistrySettings
from embedhub.registry.services import (
    model_version_default,
    model_version_register,
    model_version_register_child,
)
from tests.evaluation.conftest import add_documents, build_index, numbered_texts
from tests.factories import CorpusFactory, ModelVersionFactory
from workers.ml.spec import default_model_path

pytestmark = pytest.mark.django_db


def _child_of(parent: ModelVersion, *, owner, tmp_path, name: str = "export") -> ModelVersion:
    """What a finetune job of `owner` registers (weights left out: nothing loads them)."""
    export = shutil.copytree(
        default_model_path(), tmp_path / name, ignore=shutil.ignore_patterns("*.safetensors")
    )
    return model_version_register_child(
        parent=parent,
        owner=owner,
        export_dir=export,
        drift=np.full(384, 0.01, dtype=np.float32),
        loss_curve=[{"step": 1, "loss": 1.0}],
        training_params={},
        provenance={"kind": "finetune"},
    )


@pytest.fixture
def base(db):
    return model_version_default()  # the bundled base: registered by the system, shared


@pytest.fixture
def mallorys_child(base, other_user, tmp_path):
    return _child_of(base, owner=other_user, tmp_path=tmp_path)


def _ids(response) -> list[int]:
    assert response.status_code == 200, response.content
    return [v["id"] for v in response.json()["results"]]


def test_a_fine_tuned_child_is_private_to_its_owner_and_the_base_is_shared(
    base, mallorys_child, other_user
):
    assert (base.owner, base.visibility) == (None, "shared")
    assert (mallorys_child.owner, mallorys_child.visibility) == (other_user, "private")


def test_another_users_private_version_is_absent_from_lists_and_a_404_in_detail(
    api, other_api, staff_api, base, mallorys_child
):
    child = mallorys_child
    assert _ids(api.get("/api/v1/model-versions/")) == [base.pk]
    [model] = api.get("/api/v1/models/").json()["results"]
    assert [v["id"] for v in model["versions"]] == [base.pk]
    missing = api.get(f"/api/v1/model-versions/{child.pk}/")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert api.get(f"/api/v1/model-versions/{base.pk}/").json()["children"] == []

    for client in (other_api, staff_api):  # the owner, and staff
        assert _ids(client.get("/api/v1/model-versions/")) == [base.pk, child.pk]
        detail = client.get(f"/api/v1/model-versions/{child.pk}/")
        assert detail.status_code == 200 and detail.json()["visibility"] == "private"
        children = client.get(f"/api/v1/model-versions/{base.pk}/").json()["children"]
        assert [c["id"] for c in children] == [child.pk]


@pytest.fixture
def alices(user, base):
    """Alice's corpus with a built index and a judged query set."""
    corpus = CorpusFactory(owner=user, name="alice-docs")
    add_documents(corpus, numbered_texts(12))
    # 384 dimensions like the model, so a child's drift vector applies to its queries.
    index = build_index(owner=user, corpus=corpus, model_version=base, encoder="fake:384")
    corpus.active_index = index
    corpus.save(update_fields=["active_index"])
    query_set = QuerySet.objects.create(owner=user, corpus=corpus, name="judged")
    Query.objects.create(query_set=query_set, external_id="q1", text="document 3")
    Qrel.objects.create(query_set=query_set, query_external_id="q1", document_external_id="d3")
    return corpus, index, query_set


def _version_params(alices, version_id: int) -> list[tuple[str, dict, str]]:
    corpus, index, query_set = alices
    return [
        ("embed", {"corpus": corpus.pk, "model_version": version_id}, "params.model_version"),
        (
            "evaluate",
            {"index": index.pk, "query_set": query_set.pk, "model_version": version_id},
            "params.model_version",
        ),
        ("finetune", {"parent": version_id, "query_set": query_set.pk}, "params.parent"),
        ("reindex", {"corpus": corpus.pk, "model_version": version_id}, "params.model_version"),
    ]


def test_every_job_param_and_search_answer_404_for_a_version_the_user_may_not_see(
    api, alices, mallorys_child
):
    for kind, params, field in _version_params(alices, mallorys_child.pk):
        response = api.post("/api/v1/jobs/", {"kind": kind, "params": params}, format="json")
        assert response.status_code == 404, (kind, response.content)
        error = response.json()["error"]
        assert error["details"]["fields"] == {
            field: [f"model version {mallorys_child.pk} not found"]
        }
    corpus = alices[0]
    search = {"corpus": corpus.pk, "query": "document 3", "model_version": mallorys_child.pk}
    response = api.post("/api/v1/search/", search, format="json")
    assert response.status_code == 404, response.content
    assert not Job.objects.exists()


def test_the_same_params_are_accepted_once_staff_publish_the_version(
    api, other_api, staff_api, alices, mallorys_child
):
    child = mallorys_child
    # Alice cannot even learn that it exists; its owner may see it but not share it.
    assert api.post(f"/api/v1/model-versions/{child.pk}/publish/").status_code == 404
    refused = other_api.post(f"/api/v1/model-versions/{child.pk}/publish/")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied"

    published = staff_api.post(f"/api/v1/model-versions/{child.pk}/publish/")
    assert published.status_code == 200 and published.json()["visibility"] == "shared"
    assert staff_api.post(f"/api/v1/model-versions/{child.pk}/publish/").status_code == 200
    assert api.get(f"/api/v1/model-versions/{child.pk}/").status_code == 200
    embed, evaluate, finetune, _ = _version_params(alices, child.pk)
    for kind, params, _ in (embed, evaluate, finetune):
        response = api.post("/api/v1/jobs/", {"kind": kind, "params": params}, format="json")
        assert response.status_code == 202, (kind, response.content)
    search = {"corpus": alices[0].pk, "query": "document 3", "model_version": child.pk}
    response = api.post("/api/v1/search/", search, format="json")
    assert response.status_code == 200 and response.json()["compensation"] == "qdc"


def test_a_child_of_a_private_version_cannot_be_published_before_its_parent(
    staff_api, mallorys_child, other_user, tmp_path
):
    grandchild = _child_of(mallorys_child, owner=other_user, tmp_path=tmp_path, name="gc")
    refused = staff_api.post(f"/api/v1/model-versions/{grandchild.pk}/publish/")
    assert refused.status_code == 400 and "publish it" in refused.json()["error"]["message"]
    assert ModelVersion.objects.get(pk=grandchild.pk).visibility == "private"


def test_staff_publish_from_the_admin(staff_user, mallorys_child):
    client = Client()
    client.force_login(staff_user)
    response = client.post(
        "/admin/registry/modelversion/",
        {"action": "publish", "_selected_action": [mallorys_child.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert "is shared" in response.content.decode()
    assert ModelVersion.objects.get(pk=mallorys_child.pk).visibility == "shared"


def test_the_default_model_never_moves_when_another_user_fine_tunes_or_staff_register(
    api, user, base, mallorys_child, tmp_path
):
    corpus = CorpusFactory(owner=user, name="defaults")
    add_documents(corpus, numbered_texts(3))

    def embed_default() -> int:
        body = {"kind": "embed", "params": {"corpus": corpus.pk, "encoder": "fake:8"}}
        response = api.post("/api/v1/jobs/", body, format="json")
        assert response.status_code == 202, response.content
        return response.json()["params"]["model_version"]

    assert embed_default() == base.pk
    folder = shutil.copytree(
        default_model_path(), tmp_path / "newer", ignore=shutil.ignore_patterns("*.safetensors")
    )
    newer = model_version_register(source=str(folder), parent=base)  # staff: shared, newest
    ModelVersion.objects.filter(pk=mallorys_child.pk).update(visibility="shared")  # published
    assert newer.version > base.version and mallorys_child.version > base.version
    assert embed_default() == base.pk
    assert model_version_default() == base


def test_the_dashboard_lists_and_pickers_hide_another_users_private_version(
    user, other_user, base, mallorys_child
):
    def label(version: ModelVersion, url: str) -> str:  # how each page names a version
        return f"<strong>v{version.version}</strong>" if url == "/" else str(version)

    client = Client()
    corpus = CorpusFactory(owner=user, name="dash")
    add_documents(corpus, numbered_texts(3))
    build_index(owner=user, corpus=corpus, model_version=base)  # so search offers versions
    client.force_login(user)
    for url in ["/models/", "/search/", "/", f"/corpora/{corpus.pk}/"]:  # lists and pickers
        body = client.get(url).content.decode()
        assert label(base, url) in body and label(mallorys_child, url) not in body, url
    client.force_login(other_user)
    body = client.get("/models/").content.decode()
    assert f'id="version-{mallorys_child.pk}"' in body and ">private<" in body


def test_lineage_lists_only_versions_the_caller_may_see(
    other_api, api, base, mallorys_child, other_user, user, tmp_path
):
    grandchild = _child_of(mallorys_child, owner=other_user, tmp_path=tmp_path, name="gc")
    ancestors = other_api.get(f"/api/v1/model-versions/{grandchild.pk}/").json()["ancestors"]
    assert [a["id"] for a in ancestors] == [mallorys_child.pk, base.pk]
    # Alice's own private child of the shared base sits beside Mallory's: each sees one.
    mine = ModelVersionFactory(model=base.model, version=99, parent=base, owner=user)
    ModelVersion.objects.filter(pk=mine.pk).update(visibility="private")
    for client, expected in ((api, [mine.pk]), (other_api, [mallorys_child.pk])):
        children = client.get(f"/api/v1/model-versions/{base.pk}/").json()["children"]
        assert [c["id"] for c in children] == expected


def test_an_unusable_default_refuses_the_embed_job_instead_of_picking_another(api, user, base):
    corpus = CorpusFactory(owner=user, name="archived-default")
    add_documents(corpus, numbered_texts(2))
    ModelVersionFactory(model=base.model, version=7)  # a ready, shared candidate: not taken
    ModelVersion.objects.filter(pk=base.pk).update(status="archived")
    body = {"kind": "embed", "params": {"corpus": corpus.pk, "encoder": "fake:8"}}
    response = api.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "default_version_unusable"
    assert error["details"]["field"] == "params.model_version" and "admin" in error["message"]
    assert not Job.objects.exists()


def test_the_migration_shares_existing_versions_and_makes_the_bundled_base_the_default(base):
    migration = importlib.import_module(
        "embedhub.registry.migrations.0002_owner_visibility_default_version"
    )
    ModelVersionFactory(model=base.model, version=5, parent=base)  # an older fine-tune
    RegistrySettings.objects.all().delete()
    ModelVersion.objects.update(visibility="private")  # what adding the column left
    migration.existing_versions_shared(django_apps, None)
    assert set(ModelVersion.objects.values_list("visibility", flat=True)) == {"shared"}
    assert RegistrySettings.objects.get().default_version == base


def test_staff_choose_the_default_model_in_the_admin_among_shared_ready_versions(
    staff_user, base, mallorys_child
):
    shared = ModelVersionFactory(model=base.model, version=8, parent=base)
    client = Client()
    client.force_login(staff_user)
    url = f"/admin/registry/registrysettings/{RegistrySettings.SINGLETON}/change/"
    form = client.get(url).content.decode()
    assert f'<option value="{base.pk}" selected>' in form
    assert f'<option value="{shared.pk}">' in form
    assert f'<option value="{mallorys_child.pk}"' not in form  # private: not offered
    response = client.post(url, {"default_version": mallorys_child.pk})
    assert response.status_code == 200 and model_version_default() == base  # refused
    response = client.post(url, {"default_version": shared.pk})
    assert response.status_code == 302 and model_version_default() == shared


def test_staff_cannot_register_a_shared_child_of_a_private_version(staff_api, mallorys_child):
    body = {"source": str(default_model_path()), "name": "other", "parent": mallorys_child.pk}
    response = staff_api.post("/api/v1/model-versions/", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["details"]["field"] == "parent"
    assert not ModelVersion.objects.filter(model__name="other").exists()


def test_a_published_version_shows_other_accounts_how_it_was_made_not_on_what(
    api, other_api, staff_api, mallorys_child
):
    child = mallorys_child
    child.provenance = {
        "source": "query_set",
        "query_set": 41,
        "query_set_name": "mallory-private-train",
        "corpus": 7,
        "pairs": 928,
        "judgements": 110075,
    }
    child.adapter = {"method": "procrustes", "per_corpus": {"7": {"index": 3}}}
    child.save(update_fields=["provenance", "adapter"])
    assert staff_api.post(f"/api/v1/model-versions/{child.pk}/publish/").status_code == 200
    seen = api.get(f"/api/v1/model-versions/{child.pk}/").json()
    assert seen["provenance"] == {"source": "query_set", "pairs": 928, "judgements": 110075}
    assert seen["adapter"] == {"method": "procrustes"}
    # Its owner and staff still read all of it.
    for client in (other_api, staff_api):
        full = client.get(f"/api/v1/model-versions/{child.pk}/").json()
        assert full["provenance"]["query_set_name"] == "mallory-private-train"
        assert full["adapter"]["per_corpus"] == {"7": {"index": 3}}
