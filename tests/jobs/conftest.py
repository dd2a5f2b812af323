import pytest
from django.conf import settings
from kombu import pools as kombu_pools

from embedhub.celery import app as celery_app
from embedhub.core import embedded
from tests.factories import CorpusFactory, ModelVersionFactory
from tests.vectors.conftest import make_documents


def _use_broker(url: str) -> None:
    """Point this process's Celery producer at another broker (drop pooled connections)."""
    if celery_app._pool is not None:
        celery_app._pool.force_close_all()
    celery_app._pool = None
    celery_app.amqp._producer_pool = None  # cached producers hold the old connections
    kombu_pools.reset()  # kombu's global producer pools are keyed by broker URL
    celery_app.conf.broker_url = url
    settings.CELERY_BROKER_URL = url


@pytest.fixture
def private_broker(tmp_path, monkeypatch):
    """A Redis of this test's own (same redis-server binary), so stopping it cannot disturb
    other tests; workers started afterwards get its URL through the environment."""
    var = tmp_path / "var"
    url = embedded.redis_start(var)
    original = settings.CELERY_BROKER_URL
    monkeypatch.setenv("CELERY_BROKER_URL", url)
    _use_broker(url)
    yield var
    embedded.redis_stop(var)
    _use_broker(original)


@pytest.fixture
def big_corpus(user):
    corpus = CorpusFactory(owner=user, name="big")
    make_documents(corpus, 20000, words=4)
    return corpus


@pytest.fixture
def model_version(db):
    return ModelVersionFactory()
