"""schemathesis against the OpenAPI schema: no request, however malformed, gets a 500.

Cases are drawn from each operation's hypothesis strategy and sent in-process to the
WSGI app, authenticated with a real token (bounded: a dozen examples per operation).
"""

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def api_schema(transactional_db):
    from django.core import signals
    from django.core.wsgi import get_wsgi_application
    from django.db import close_old_connections
    from drf_spectacular.generators import SchemaGenerator

    # As Django's test client does: the handler must not close the test's connection.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)

    raw = json.loads(
        json.dumps(SchemaGenerator().get_schema(request=None, public=True), default=str)
    )
    loaded = schemathesis.openapi.from_dict(raw)
    loaded.app = get_wsgi_application()
    yield loaded
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def token_header(user):
    from rest_framework.authtoken.models import Token

    return {"Authorization": f"Token {Token.objects.get_or_create(user=user)[0].key}"}


def _operations(api_schema):
    return [result.ok() for result in api_schema.get_all_operations()]


def test_schema_has_unique_component_names_and_covers_every_api(api_schema):
    paths = {op.path for op in _operations(api_schema)}
    for expected in ["/api/v1/jobs/", "/api/v1/search/", "/api/v1/corpora/", "/api/v1/eval-runs/"]:
        assert expected in paths


def test_no_endpoint_answers_a_server_error(api_schema, token_header):
    failures, statuses = [], set()
    operations = _operations(api_schema)
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=12,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def probe(case):
            response = case.call(headers=token_header)
            statuses.add(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}")

        probe()
    assert not failures, "\n".join(sorted(set(failures)))
    assert {400, 404} <= statuses, statuses  # the fuzzing reached validation and lookups


def _job_submission(api_schema):
    for operation in _operations(api_schema):
        if operation.path == "/api/v1/jobs/" and operation.method.upper() == "POST":
            return operation
    raise AssertionError("POST /api/v1/jobs/ is not in the schema")


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_job_params_of_every_kind_are_fuzzed_and_never_answer_a_server_error(
    api_schema, token_header, mode
):
    """The schema documents each kind's params (a oneOf on "kind"), so the fuzzer builds
    bodies inside them: schema-valid ones (positive) and schema-breaking ones (negative)."""
    from schemathesis.generation import GenerationMode

    from embedhub.jobs.models import Job

    operation = _job_submission(api_schema)
    failures: list[str] = []
    sent: dict[str, int] = {}
    named: dict[str, set[str]] = {}

    @given(
        case=operation.as_strategy(
            generation_mode=GenerationMode(mode), media_type="application/json"
        )
    )
    @settings(
        max_examples=300,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def probe(case):
        response = case.call(headers=token_header)
        body = case.body if isinstance(case.body, dict) else {}
        kind = body.get("kind") if isinstance(body.get("kind"), str) else None
        if response.status_code >= 500:
            failures.append(f"{response.status_code} for {json.dumps(body, default=str)[:300]}")
            return
        sent[kind] = sent.get(kind, 0) + 1
        if response.status_code in (400, 404) and kind in Job.Kind.values:
            field = response.json()["error"]["details"].get("field", "")
            if field.startswith("params."):
                named.setdefault(kind, set()).add(field)

    probe()
    assert not failures, "\n".join(failures[:20])
    if mode == "positive":
        # Every kind's params were reached, and errors named fields inside them.
        assert set(Job.Kind.values) <= set(sent), sent
        assert set(named) == set(Job.Kind.values), named


def test_schema_documents_each_kinds_params_as_a_discriminated_one_of():
    from drf_spectacular.generators import SchemaGenerator

    from embedhub.jobs.models import Job

    schema = SchemaGenerator().get_schema(request=None, public=True)
    body = schema["paths"]["/api/v1/jobs/"]["post"]["requestBody"]["content"]["application/json"]
    components = schema["components"]["schemas"]
    submission = components[body["schema"]["$ref"].rsplit("/", 1)[1]]
    assert submission["discriminator"]["propertyName"] == "kind"
    assert set(submission["discriminator"]["mapping"]) == set(Job.Kind.values)
    assert len(submission["oneOf"]) == len(Job.Kind.values)
    evaluate = components["EvaluateParamsRequest"]
    assert evaluate["additionalProperties"] is False
    k = evaluate["properties"]["k"]
    assert (k["type"], k["default"], k["minimum"], k["maximum"]) == ("integer", 100, 1, 1000)
    assert k["description"] and "query_set" in evaluate["required"]
    config = components["FinetuneConfigParamsRequest"]["properties"]
    assert config["lr"]["maximum"] == 0.01 and config["lr"]["description"]
    gate = components["GateParamsRequest"]["properties"]["tolerance"]
    assert gate["maximum"] == 0.1 and gate["default"] == 0.01
