"""Re-uploads upsert by external id: unchanged rows untouched, changed rows re-hashed."""

from __future__ import annotations

import pytest

from tests.corpora.conftest import docs, write_jsonl


@pytest.mark.django_db(transaction=True)  # real commits, so each upload has its own now()
def test_reupload_touches_only_what_changed(tmp_path, ingest, corpus):
    first = [
        {"_id": "same", "title": "T", "text": "unchanged"},
        {"_id": "edited", "title": "T", "text": "old text"},
        {"_id": "retitled", "title": "Old", "text": "body"},
        {"_id": "tagged", "text": "body", "metadata": {"v": 1}},
    ]
    assert ingest(write_jsonl(tmp_path / "v1.jsonl", first))["inserted"] == 4
    before = docs(corpus)

    second = [
        {"_id": "same", "title": "T", "text": "unchanged"},
        {"_id": "edited", "title": "T", "text": "new text"},
        {"_id": "retitled", "title": "New", "text": "body"},
        {"_id": "tagged", "text": "body", "metadata": {"v": 2}},
        {"_id": "added", "text": "brand new"},
    ]
    result = ingest(write_jsonl(tmp_path / "v2.jsonl", second))
    assert {k: result[k] for k in ("inserted", "updated", "metadata_updated", "unchanged")} == {
        "inserted": 1,
        "updated": 2,
        "metadata_updated": 1,
        "unchanged": 1,
    }
    after = docs(corpus)
    assert corpus.documents.count() == 5
    for key in before:  # upsert, never delete + insert
        assert after[key].pk == before[key].pk
    assert after["same"].updated_at == before["same"].updated_at
    assert after["same"].content_hash == before["same"].content_hash
    assert after["edited"].text == "new text"
    assert after["edited"].content_hash != before["edited"].content_hash
    assert after["edited"].updated_at > before["edited"].updated_at
    assert after["retitled"].content_hash != before["retitled"].content_hash
    # Metadata is stored but is not part of the hash: no re-embedding needed.
    assert after["tagged"].metadata == {"v": 2}
    assert after["tagged"].content_hash == before["tagged"].content_hash

    again = ingest(write_jsonl(tmp_path / "v2-again.jsonl", second))
    assert (again["inserted"], again["updated"], again["unchanged"]) == (0, 0, 5)
    assert corpus.documents.count() == 5


@pytest.mark.django_db
def test_documents_missing_from_a_reupload_are_kept(tmp_path, ingest, corpus):
    ingest(
        write_jsonl(tmp_path / "a.jsonl", [{"_id": "1", "text": "a"}, {"_id": "2", "text": "b"}])
    )
    ingest(write_jsonl(tmp_path / "b.jsonl", [{"_id": "3", "text": "c"}]))
    assert sorted(docs(corpus)) == ["1", "2", "3"]


@pytest.mark.django_db
def test_same_ids_in_two_corpora_do_not_collide(tmp_path, ingest, corpus, user):
    from tests.factories import CorpusFactory

    other = CorpusFactory(owner=user, name="other")
    path = write_jsonl(tmp_path / "a.jsonl", [{"_id": "1", "text": "a"}])
    ingest(path)
    assert ingest(path, target=other)["inserted"] == 1
    assert corpus.documents.count() == 1 and other.documents.count() == 1
