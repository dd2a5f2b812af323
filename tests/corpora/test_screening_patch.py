"""PATCH of a corpus's screening settings is partial whatever the body's encoding: a form
body that leaves out `enabled` keeps screening on (it used to read as false)."""

from urllib.parse import urlencode

import pytest

from tests.factories import CorpusFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("encoding", ["json", "form", "multipart"])
def test_a_screening_patch_changes_only_what_it_sends(api, user, encoding):
    corpus = CorpusFactory(owner=user)
    url = f"/api/v1/corpora/{corpus.pk}/screening/"
    assert api.patch(url, {"enabled": True, "fpr": 0.01}, format="json").status_code == 200
    if encoding == "form":
        body = urlencode({"fpr": "0.05"})
        response = api.generic("PATCH", url, body, "application/x-www-form-urlencoded")
    else:
        response = api.patch(url, {"fpr": 0.05}, format=encoding)
    assert response.status_code == 200, response.content
    assert response.json()["enabled"] is True and response.json()["fpr"] == 0.05
    corpus.refresh_from_db()
    assert corpus.screening_enabled and corpus.screening_fpr == 0.05
