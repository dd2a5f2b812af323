import hashlib

import pytest

from embedhub.corpora.models import Document
from tests.factories import CorpusFactory, ModelVersionFactory


def make_documents(corpus, n: int, *, start: int = 0, words: int = 12) -> None:
    docs = []
    for i in range(start, start + n):
        text = " ".join(f"w{(i * 7 + j) % 101}" for j in range(words)) + f" doc {i}"
        title = f"Doc {i}"
        digest = hashlib.sha256(f"{title}\n{text}".encode()).hexdigest()
        docs.append(
            Document(
                corpus=corpus, external_id=f"d{i}", title=title, text=text, content_hash=digest
            )
        )
    Document.objects.bulk_create(docs, batch_size=5000)


@pytest.fixture
def model_version(db):
    return ModelVersionFactory()


@pytest.fixture
def corpus(user):
    return CorpusFactory(owner=user, name="c1")
