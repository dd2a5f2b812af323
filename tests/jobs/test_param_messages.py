"""A refused param's message names its field once, before a readable sentence: no
unfilled placeholder, no field name said twice."""

import pytest

from embedhub.core.errors import ApplicationError
from embedhub.jobs.params import params_error, params_field
from tests.factories import CorpusFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("value", [-1, 0])
def test_an_id_below_one_says_the_value_it_got(api, user, value):
    body = {"kind": "embed", "params": {"corpus": value}}
    response = api.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 400, response.content
    expected = f"params.corpus: must be an integer of at least 1, not {value}"
    assert response.json()["error"]["message"] == expected


@pytest.mark.parametrize(
    ("raw", "said_once"),
    [
        (
            "params.path must name a file stored by an upload",
            "must name a file stored by an upload",
        ),
        ("path: must name a file", "must name a file"),
        ("params.path: must name a file", "must name a file"),
        ("path 5 is not a file", "path 5 is not a file"),  # a leading noun stays
    ],
)
def test_a_serializer_refusal_names_its_field_once(raw, said_once):
    error = params_error({"path": [raw]})
    assert error.message == f"params.path: {said_once}"
    assert error.details["fields"] == {"params.path": [said_once]}


@pytest.mark.parametrize(
    ("raw", "said_once"),
    [
        ("query_ids: 4 not in query set 1", "4 not in query set 1"),
        ("params.query_ids: 4 not in query set 1", "4 not in query set 1"),
        ("4 not in query set 1", "4 not in query set 1"),
    ],
)
def test_a_service_refusal_names_its_field_once(raw, said_once):
    error = params_field("query_ids", ApplicationError(raw, code="bad_query_ids"))
    assert error.message == f"params.query_ids: {said_once}"
    assert error.details["field"] == "params.query_ids" and error.code == "bad_query_ids"


def test_an_ingest_path_outside_the_uploads_is_named_once(api, user):
    corpus = CorpusFactory(owner=user)
    body = {"kind": "ingest", "params": {"corpus": corpus.pk, "path": "../../etc/passwd"}}
    response = api.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 400, response.content
    message = response.json()["error"]["message"]
    prefix = "params.path: "
    assert message.startswith(prefix) and "params.path" not in message[len(prefix) :]
