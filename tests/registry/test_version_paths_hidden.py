"""A model version's server paths (its weights, a local source, a Hub snapshot, a training
file, an adapter) are shown whole to staff only: other users see names relative to the
storage root, in the version's detail, the version list and the model list."""

from __future__ import annotations

import json
import sys

import pytest
from django.conf import settings

from tests.factories import ModelVersionFactory

pytestmark = pytest.mark.django_db

SERVER_ROOTS = (str(settings.ARTIFACT_ROOT), str(settings.MEDIA_ROOT), str(settings.BASE_DIR))


@pytest.fixture
def version(user):
    weights = f"{settings.ARTIFACT_ROOT}/models/minilm/v2"
    return ModelVersionFactory(
        owner=user,
        artifact_path=weights,
        source=weights,
        adapter_path=f"{weights}/adapter.npz",
        provenance={
            "source": "file",
            "file": f"{settings.MEDIA_ROOT}/training-sets/{user.pk}/abc.jsonl",
            "snapshot": f"{sys.prefix}/hub/models--x/snapshots/1",
        },
    )


def _leaks(body) -> list[str]:
    text = json.dumps(body)
    return [root for root in (*SERVER_ROOTS, sys.prefix) if root in text]


def test_a_non_staff_user_sees_no_server_path_in_a_version(api, version):
    body = api.get(f"/api/v1/model-versions/{version.pk}/").json()
    assert _leaks(body) == []
    assert body["artifact_path"] == body["source"] == "models/minilm/v2"
    assert body["provenance"]["file"].endswith(f"training-sets/{version.owner_id}/abc.jsonl")
    assert body["provenance"]["snapshot"] == "1"


@pytest.mark.parametrize("url", ["/api/v1/model-versions/", "/api/v1/models/"])
def test_a_non_staff_user_sees_no_server_path_in_the_lists(api, version, url):
    body = api.get(url).json()
    assert "models/minilm/v2" in json.dumps(body) and _leaks(body) == []


def test_staff_see_the_versions_paths_whole(staff_api, version):
    body = staff_api.get(f"/api/v1/model-versions/{version.pk}/").json()
    assert body["artifact_path"] == version.artifact_path
    assert body["provenance"]["file"] == version.provenance["file"]
    listed = staff_api.get("/api/v1/model-versions/").json()
    assert version.source in json.dumps(listed)
