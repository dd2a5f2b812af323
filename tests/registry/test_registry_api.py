"""The registry API: models with versions, version lineage, staff-only registration."""

from __future__ import annotations

import shutil

import pytest

from embedhub.registry.models import ModelVersion
from embedhub.registry.services import model_version_register
from workers.ml.spec import default_model_path

pytestmark = pytest.mark.django_db


@pytest.fixture
def lineage(tmp_path):
    """base -> child -> grandchild, plus a sibling of child."""
    base = model_version_register()

    def derive(name: str, parent: ModelVersion, **extra) -> ModelVersion:
        folder = shutil.copytree(
            default_model_path(), tmp_path / name, ignore=shutil.ignore_patterns("*.safetensors")
        )
        return model_version_register(source=str(folder), parent=parent, **extra)

    child = derive("child", base, drift_norm=0.25)
    grandchild = derive("grandchild", child)
    sibling = derive("sibling", base, status="failed")
    return base, child, grandchild, sibling


def test_models_list_their_versions(api, lineage):
    [model] = api.get("/api/v1/models/").json()["results"]
    assert model["name"] == "all-MiniLM-L6-v2"
    assert [v["version"] for v in model["versions"]] == [1, 2, 3, 4]
    assert model["versions"][1]["parent"] == lineage[0].pk


def test_versions_filter_by_model_and_status(api, lineage):
    ready = api.get(
        "/api/v1/model-versions/", {"model": "all-MiniLM-L6-v2", "status": "ready"}
    ).json()
    assert [v["id"] for v in ready["results"]] == [v.pk for v in lineage[:3]]
    failed = api.get("/api/v1/model-versions/", {"status": "failed"}).json()
    assert [v["id"] for v in failed["results"]] == [lineage[3].pk]
    assert api.get("/api/v1/model-versions/", {"model": "nope"}).json()["count"] == 0


def test_version_detail_shows_lineage_and_spec(api, lineage):
    base, child, grandchild, sibling = lineage
    detail = api.get(f"/api/v1/model-versions/{grandchild.pk}/").json()
    assert detail["parent"] == child.pk
    assert [a["id"] for a in detail["ancestors"]] == [child.pk, base.pk]
    assert detail["children"] == []
    assert (detail["dimension"], detail["pooling"], detail["normalize"]) == (384, "mean", True)
    base_detail = api.get(f"/api/v1/model-versions/{base.pk}/").json()
    assert [c["id"] for c in base_detail["children"]] == [child.pk, sibling.pk]
    assert base_detail["ancestors"] == []
    assert api.get(f"/api/v1/model-versions/{child.pk}/").json()["drift_norm"] == 0.25
    missing = api.get("/api/v1/model-versions/999999/")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_registration_is_staff_only(api, staff_api):
    refused = api.post("/api/v1/model-versions/", {}, format="json")
    assert refused.status_code == 403 and "error" in refused.json()
    assert not ModelVersion.objects.exists()
    created = staff_api.post("/api/v1/model-versions/", {}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["model"] == "all-MiniLM-L6-v2" and created.json()["dimension"] == 384
    again = staff_api.post("/api/v1/model-versions/", {"source": None}, format="json")
    assert again.status_code == 200 and again.json()["id"] == created.json()["id"]


def test_registration_errors_use_the_error_shape(staff_api, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    response = staff_api.post(
        "/api/v1/model-versions/", {"source": "org/missing-model"}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "hub_unreachable"
    response = staff_api.post(
        "/api/v1/model-versions/", {"source": "/nowhere/model"}, format="json"
    )
    assert response.status_code == 400 and response.json()["error"]["details"]["field"] == "source"
