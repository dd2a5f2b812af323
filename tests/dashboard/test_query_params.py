"""Ids read from a dashboard page's query string are ASCII digits or nothing: "²" and
other Unicode digits (which str.isdigit accepts and int() refuses) are never a 500."""

import pytest

from embedhub.core.querystrings import PG_BIGINT_MAX, query_id
from embedhub.jobs.models import Job
from embedhub.registry.models import ModelVersion
from tests.factories import CorpusFactory, ModelVersionFactory

pytestmark = pytest.mark.django_db

NOT_IDS = ["²", "١٢", "𝟙", "-1", "1.0", " 1", "", str(PG_BIGINT_MAX + 1)]


@pytest.mark.parametrize("value", NOT_IDS)
def test_a_query_id_is_ascii_digits_within_bigint_or_none(value):
    assert query_id(value) is None


def test_a_query_id_reads_ascii_digits():
    assert query_id("0042") == 42 and query_id(str(PG_BIGINT_MAX)) == PG_BIGINT_MAX


@pytest.fixture
def logged_in(client, user):
    client.force_login(user)
    return client


@pytest.mark.parametrize("value", ["%C2%B2", "%D9%A1", "99999999999999999999999"])
def test_the_job_list_ignores_a_corpus_that_is_not_an_id(logged_in, user, value):
    corpus = CorpusFactory(owner=user)
    Job.objects.create(owner=user, kind="embed", params={}, corpus=corpus)
    response = logged_in.get(f"/jobs/?corpus={value}")
    assert response.status_code == 200
    assert logged_in.get(f"/jobs/?corpus={corpus.pk}").status_code == 200


@pytest.mark.parametrize("value", ["%C2%B2", "%D9%A1", "99999999999999999999999", "abc"])
def test_the_forgetting_matrix_of_a_version_that_is_not_an_id_is_a_404(logged_in, user, value):
    root = ModelVersionFactory()
    ModelVersionFactory(
        model=root.model, parent=root, owner=user, visibility=ModelVersion.Visibility.PRIVATE
    )
    assert logged_in.get(f"/evaluations/forgetting/?version={value}").status_code == 404
    assert logged_in.get("/evaluations/forgetting/").status_code == 200
