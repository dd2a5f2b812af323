"""Activate and drop under concurrency: both take the corpus row lock and re-check the index
under it, so a decision is never made on a snapshot another transaction has changed."""

import pytest
from django.db import connection, transaction

from embedhub.core.errors import Conflict
from embedhub.vectors.models import VectorIndex
from embedhub.vectors.services import index_activate, index_create, index_drop
from tests.locking import InThread, wait_for_lock_waiters

pytestmark = pytest.mark.django_db(transaction=True)


def _table_exists(table: str) -> bool:
    with connection.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", [table])
        return cur.fetchone()[0] is not None


@pytest.fixture
def two_indexes(user, corpus, model_version):
    """`active` is the corpus's active index, `spare` a built one that is not."""
    indexes = []
    for _ in range(2):
        index = index_create(
            owner=user, corpus=corpus, model_version=model_version, encoder="fake:8"
        )
        VectorIndex.objects.filter(pk=index.pk).update(state=VectorIndex.State.READY)
        index.refresh_from_db()
        indexes.append(index)
    active, spare = indexes
    index_activate(index=active)
    return active, spare


def test_drop_waits_for_a_rollback_in_flight_then_refuses_the_index_it_activated(
    corpus, two_indexes
):
    active, spare = two_indexes
    stale = VectorIndex.objects.get(pk=spare.pk)  # read while it was not active
    with transaction.atomic():
        index_activate(index=spare)  # the rollback: holds the corpus lock until commit
        dropping = InThread(lambda: index_drop(index=stale))
        wait_for_lock_waiters(1)
    with pytest.raises(Conflict, match="active index"):
        dropping.join()
    corpus.refresh_from_db()
    spare.refresh_from_db()
    assert corpus.active_index_id == spare.pk and spare.state == "ready"
    assert _table_exists(spare.table_name)


def test_activate_refuses_an_index_dropped_after_it_was_read(corpus, two_indexes):
    active, spare = two_indexes
    stale = VectorIndex.objects.get(pk=spare.pk)  # still "ready" in this copy
    index_drop(index=VectorIndex.objects.get(pk=spare.pk))
    with pytest.raises(Conflict, match="dropped"):
        index_activate(index=stale)
    corpus.refresh_from_db()
    assert corpus.active_index_id == active.pk


def test_dropping_an_already_dropped_index_again_is_a_no_op(two_indexes):
    _, spare = two_indexes
    stale = VectorIndex.objects.get(pk=spare.pk)
    index_drop(index=spare)
    index_drop(index=stale)
    assert stale.state == "dropped" and not _table_exists(spare.table_name)
