"""PATCH of a corpus's serving-policy settings is partial whatever the body's encoding:
the settings a request does not send stay as they were (a form body used to read every
boolean it did not send as false)."""

from urllib.parse import urlencode

import pytest

from tests.factories import CorpusFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def url(api, user):
    corpus = CorpusFactory(owner=user)
    url = f"/api/v1/corpora/{corpus.pk}/policy/"
    body = {"allow_reindex": True, "exclude_self": True, "tolerance": 0.05}
    assert api.patch(url, body, format="json").status_code == 200
    return url


def _settings(response) -> dict:
    assert response.status_code == 200, response.content
    body = response.json()
    return {key: body[key] for key in ("tolerance", "allow_reindex", "exclude_self", "metric")}


@pytest.mark.parametrize("encoding", ["json", "form", "multipart"])
def test_a_policy_patch_changes_only_the_settings_it_sends(api, url, encoding):
    if encoding == "form":
        response = api.generic(
            "PATCH", url, urlencode({"tolerance": "0.02"}), "application/x-www-form-urlencoded"
        )
    else:
        response = api.patch(url, {"tolerance": 0.02}, format=encoding)
    expected = {"tolerance": 0.02, "allow_reindex": True, "exclude_self": True, "metric": "ndcg@10"}
    assert _settings(response) == expected
    assert _settings(api.get(url)) == expected


def test_a_form_patch_still_sets_the_booleans_it_sends(api, url):
    body = urlencode({"exclude_self": "false"})
    response = api.generic("PATCH", url, body, "application/x-www-form-urlencoded")
    assert _settings(response)["exclude_self"] is False
    assert _settings(response)["allow_reindex"] is True
