"""Training-set uploads: the size cap answers 413 in the one error shape."""

from __future__ import annotations

import pytest

from embedhub.registry.training_sets import training_dir
from tests.registry.conftest import training_set_upload

pytestmark = pytest.mark.django_db

PAIRS = b'{"query": "a", "positive": "b"}\n{"query": "c", "positive": "d"}\n'


def test_training_set_over_the_limit_is_413_and_nothing_is_stored(api, user, settings):
    settings.EMBEDHUB_MAX_TRAINING_SET_BYTES = len(PAIRS) - 1
    response = training_set_upload(api, PAIRS)
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "file_too_large"
    assert error["details"] == {"size": len(PAIRS), "limit": len(PAIRS) - 1}
    assert "EMBEDHUB_MAX_TRAINING_SET_BYTES" in error["message"]
    folder = training_dir(user=user)
    assert not folder.exists() or not any(folder.iterdir())
    settings.EMBEDHUB_MAX_TRAINING_SET_BYTES = len(PAIRS)
    response = training_set_upload(api, PAIRS)
    assert response.status_code == 201 and response.json()["pairs"] == 2


def test_training_set_declaring_too_much_is_refused_before_it_is_read(api, settings):
    settings.EMBEDHUB_MAX_TRAINING_SET_BYTES = 10
    response = api.post(
        "/api/v1/training-sets/",
        data=b"x" * 100,
        content_type="multipart/form-data; boundary=b",
        CONTENT_LENGTH=str(10 * 1024**2),
    )
    assert response.status_code == 413
    assert response.json()["error"]["details"]["size"] == 10 * 1024**2
