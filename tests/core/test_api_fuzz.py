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
