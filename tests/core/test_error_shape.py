"""Every validation 400 answers one `details` shape, whatever refused it: a serializer of a
plain body, a job's params, a list filter or the NUL guard. A client reads the first bad
field from `details.field` and every bad field's messages from `details.fields`. A service's
refusal that names a field (409, 422, 404 alike) reads the same; only a file error's
`field` names a record field inside the uploaded file ({"file", "line", "field", "problem"})."""

import io

import pytest

from tests.factories import CorpusFactory, DocumentFactory, ModelVersionFactory

pytestmark = pytest.mark.django_db


def _refused(response, status: int = 400) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    details = error["details"]
    assert set(details) >= {"field", "fields"}, details
    assert details["field"] == next(iter(details["fields"]))
    assert all(
        isinstance(messages, list) and all(isinstance(m, str) for m in messages)
        for messages in details["fields"].values()
    ), details
    return error


def test_a_search_body_a_corpus_create_and_job_params_share_one_details_shape(api, user):
    corpus = CorpusFactory(owner=user)
    search = _refused(
        api.post("/api/v1/search/", {"corpus": corpus.pk, "query": "x", "k": 0}, format="json")
    )
    assert search["details"]["field"] == "k"
    assert search["message"] == f"k: {search['details']['fields']['k'][0]}"

    create = _refused(api.post("/api/v1/corpora/", {"description": "no name"}, format="json"))
    assert create["details"]["fields"] == {"name": ["This field is required."]}

    body = {"kind": "embed", "params": {"corpus": corpus.pk, "chunk_window": "12"}}
    job = _refused(api.post("/api/v1/jobs/", body, format="json"))
    assert job["details"]["field"] == "params.chunk_window"
    assert job["details"]["fields"]["params.chunk_window"] == ["must be an integer"]


def test_every_bad_field_is_listed_under_its_flat_path(api, user):
    body = {"corpus": 1, "query": 5, "k": "10", "exact": "yes"}
    error = _refused(api.post("/api/v1/search/", body, format="json"))
    assert set(error["details"]["fields"]) == {"query", "k", "exact"}


def test_a_serializer_wide_check_is_named_non_field_errors(api):
    error = _refused(api.post("/api/v1/search/", {"query": "x"}, format="json"))
    assert error["details"]["fields"] == {"non_field_errors": ["give either corpus or index"]}
    assert error["message"] == "non_field_errors: give either corpus or index"


def test_a_list_filter_and_a_nul_in_a_query_share_it_too(api):
    _refused(api.get("/api/v1/jobs/?corpus=999999"))
    assert _refused(api.get("/api/v1/corpora/?name=a%00b"))["details"]["field"] == "name"


def test_a_duplicate_corpus_name_409_names_the_field_in_the_validation_shape(api):
    assert api.post("/api/v1/corpora/", {"name": "dup"}, format="json").status_code == 201
    error = _refused(api.post("/api/v1/corpora/", {"name": "dup"}, format="json"), 409)
    assert error["code"] == "conflict"
    assert error["details"] == {"field": "name", "fields": {"name": [error["message"]]}}


def test_a_bad_idempotency_key_names_the_header_and_a_reused_one_keeps_its_job(api, user):
    corpus = CorpusFactory(owner=user)
    DocumentFactory(corpus=corpus)
    body = {"kind": "embed", "params": {"corpus": corpus.pk, "encoder": "fake:8"}}
    long = _refused(api.post("/api/v1/jobs/", body, format="json", HTTP_IDEMPOTENCY_KEY="k" * 201))
    assert long["details"]["fields"] == {"Idempotency-Key": ["at most 200 characters, not 201"]}
    control = _refused(api.post("/api/v1/jobs/", body, format="json", HTTP_IDEMPOTENCY_KEY="a\x01"))
    assert control["details"]["fields"] == {"Idempotency-Key": ["printable characters only"]}

    first = api.post("/api/v1/jobs/", body, format="json", HTTP_IDEMPOTENCY_KEY="key-1")
    assert first.status_code == 202, first.content
    other = {**body, "params": {**body["params"], "chunk_window": 64}}
    reused = _refused(
        api.post("/api/v1/jobs/", other, format="json", HTTP_IDEMPOTENCY_KEY="key-1"), 422
    )
    assert reused["details"]["job"] == first.json()["id"]
    assert reused["details"]["field"] == "Idempotency-Key"
    assert set(reused["details"]["fields"]) == {"Idempotency-Key"}


@pytest.mark.parametrize(
    ("training_set", "status", "problem"),
    [
        ("abc", 400, "expected the sha256 returned by the upload"),
        ("0" * 64, 404, f"training_set {'0' * 64} not found"),
    ],
    ids=["malformed", "not found"],
)
def test_a_finetunes_training_set_refusal_names_the_param(api, training_set, status, problem):
    params = {"parent": ModelVersionFactory().pk, "training_set": training_set}
    response = api.post("/api/v1/jobs/", {"kind": "finetune", "params": params}, format="json")
    error = _refused(response, status)
    assert error["details"]["field"] == "params.training_set"
    (message,) = error["details"]["fields"]["params.training_set"]
    assert message.startswith(problem) and error["message"] == f"params.training_set: {message}"


def test_a_staff_registration_with_a_bad_source_names_the_field(staff_api):
    body = {"source": "not a hub id"}
    error = _refused(staff_api.post("/api/v1/model-versions/", body, format="json"))
    assert error["details"] == {"field": "source", "fields": {"source": [error["message"]]}}


def test_a_file_error_keeps_its_own_shape_naming_the_line_and_record_field(api):
    upload = io.BytesIO(b'{"query": "a", "positive": "b"}\n{"query": "c"}\n')
    upload.name = "pairs.jsonl"
    response = api.post("/api/v1/training-sets/", {"file": upload}, format="multipart")
    assert response.status_code == 400, response.content
    details = response.json()["error"]["details"]
    assert set(details) == {"file", "line", "field", "problem"}
    assert (details["file"], details["line"], details["field"]) == ("pairs.jsonl", 2, "positive")


def test_an_upload_into_another_accounts_corpus_is_a_404_naming_the_field(api, other_user):
    theirs = CorpusFactory(owner=other_user)
    answers = []
    for corpus_id in (theirs.pk, 999_999):
        upload = io.BytesIO(b'{"_id": "d1", "text": "x"}\n')
        upload.name = "docs.jsonl"
        body = {"file": upload, "corpus": corpus_id}
        error = _refused(api.post("/api/v1/corpora/upload/", body, format="multipart"), 404)
        assert error["details"]["field"] == "corpus"
        answers.append(error["message"].replace(str(corpus_id), "N"))
    assert answers[0] == answers[1]  # another account's id reads as a missing one
