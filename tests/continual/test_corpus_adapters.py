"""The per-corpus adapter fit (continual/services/corpus_adapters.py): the child's pass over
the document sample is made only where the ranking map can be used. The fake encoder stands
in for the child; the real model's path is tests/continual/test_finetune_adapter.py."""

from __future__ import annotations

import numpy as np
import pytest

from embedhub.continual.services.corpus_adapters import corpus_adapter_fit
from embedhub.evaluation.models import Qrel, Query, QuerySet
from tests.evaluation.conftest import add_documents, build_index, numbered_texts
from tests.factories import CorpusFactory, ModelVersionFactory, UserFactory
from workers.ml.adapter import Adapter
from workers.ml.encoder import load_encoder

pytestmark = pytest.mark.django_db(transaction=True)

ENCODER = "fake:16"


class RecordingEncoder:
    """The fake encoder, counting the texts it embeds of each kind."""

    def __init__(self) -> None:
        self._inner = load_encoder(ENCODER)
        self.dimension = self._inner.dimension
        self.encoded: dict[str, int] = {}

    def encode(self, texts: list[str], *, kind: str) -> np.ndarray:
        self.encoded[kind] = self.encoded.get(kind, 0) + len(texts)
        return self._inner.encode(texts, kind=kind)


def _served_corpus():
    """A corpus on its parent's index with one judged query set, "test": the one the
    policy measures, so it cannot also be the probe that chooses a blend."""
    owner = UserFactory()
    corpus = CorpusFactory(owner=owner)
    add_documents(corpus, numbered_texts(30))
    index = build_index(
        owner=owner, corpus=corpus, model_version=ModelVersionFactory(), encoder=ENCODER
    )
    query_set = QuerySet.objects.create(owner=owner, corpus=corpus, name="test")
    for i in range(8):
        Query.objects.create(query_set=query_set, external_id=f"q{i}", text=f"about w{i * 7}")
        Qrel.objects.create(
            query_set=query_set, query_external_id=f"q{i}", document_external_id=f"d{i}"
        )
    return index


def _fit(index, tmp_path, *, new_task: bool):
    child, notes = RecordingEncoder(), []
    entry = corpus_adapter_fit(
        index=index,
        child_encoder=child,
        budget=100,
        export_dir=tmp_path,
        seed=0,
        new_task=new_task,
        report=notes.append,
    )
    return entry, child.encoded, notes


def test_an_old_task_without_probe_queries_skips_the_childs_document_pass(tmp_path):
    index = _served_corpus()
    entry, encoded, notes = _fit(index, tmp_path, new_task=False)
    # The query map alone: only queries were embedded, no ranking map was fitted.
    assert encoded == {"query": 8}
    assert entry["chosen"] == "blend@0" and entry["blend_chosen_by"] == "task"
    assert entry["ranking_map"] is None and entry["documents"] == 0
    assert entry["queries"] == 8 and entry["probe_query_sets"] == []
    assert notes == ["fitting its query map (8 queries)"]
    stored = Adapter.from_bytes((tmp_path / entry["file"]).read_bytes())
    assert stored.weight.shape == (16, 16)


def test_the_fine_tunes_own_corpus_still_gets_the_ranking_map(tmp_path):
    index = _served_corpus()
    entry, encoded, notes = _fit(index, tmp_path, new_task=True)
    assert encoded == {"query": 8, "document": 30}
    assert entry["chosen"] == "blend@1" and entry["documents"] == 30
    assert "held_out_reindex_overlap@10" in entry["ranking_map"]
    assert notes[0] == "embedding 30 of its documents with the new version"
