"""Malformed job submissions, for every kind, as a new user would send them over the API.

Every one gets a 4xx in the one error shape, naming the params field it is about, and
leaves nothing behind: no job, no index, no vector table. The first cases are the ones that
used to answer 500 (or were accepted); the rest are generated from each kind's own Params
serializer, so a field added later is covered too.
"""

from __future__ import annotations

import pytest
from django.db import connection
from rest_framework import serializers

from embedhub.core.serializers import (
    StrictBooleanField,
    StrictCharField,
    StrictChoiceField,
    StrictFloatField,
    StrictIntegerField,
)
from embedhub.corpora.services import upload_folder
from embedhub.evaluation.models import Qrel, Query, QuerySet
from embedhub.jobs.kinds import job_kind_get
from embedhub.jobs.models import Job
from embedhub.jobs.params import OwnedObjectField
from embedhub.vectors import services as vector_services
from embedhub.vectors.models import VectorIndex
from tests.audits.conftest import MESSAGE, VITAMIN_D
from tests.evaluation.conftest import add_documents, build_index, numbered_texts
from tests.factories import CorpusFactory, ModelVersionFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(user, other_user):
    """One valid submission per kind, plus objects of another user to probe access."""
    corpus = CorpusFactory(owner=user, name="mine")
    add_documents(corpus, numbered_texts(12))
    version = ModelVersionFactory()
    child = ModelVersionFactory(model=version.model, version=version.version + 1)
    index = build_index(owner=user, corpus=corpus, model_version=version, encoder="fake:8")
    corpus.active_index = index
    corpus.save(update_fields=["active_index"])
    real = vector_services.index_create(owner=user, corpus=corpus, model_version=version)
    VectorIndex.objects.filter(pk=real.pk).update(state=VectorIndex.State.READY)
    query_set = QuerySet.objects.create(owner=user, corpus=corpus, name="qs")
    Query.objects.bulk_create(
        Query(query_set=query_set, external_id=f"q{i}", text=t) for i, t in enumerate(VITAMIN_D)
    )
    Qrel.objects.create(query_set=query_set, query_external_id="q0", document_external_id="d1")
    upload = upload_folder(owner_id=user.pk) / "malformed"
    upload.mkdir(parents=True, exist_ok=True)
    (upload / "docs.jsonl").write_text('{"_id": "x", "text": "y"}\n')
    foreign = CorpusFactory(owner=other_user, name="theirs")
    add_documents(foreign, numbered_texts(3))
    valid = {
        "ingest": {"corpus": corpus.pk, "path": "malformed/docs.jsonl"},
        "embed": {"corpus": corpus.pk, "encoder": "fake:8"},
        "evaluate": {"index": index.pk, "query_set": query_set.pk},
        "finetune": {"parent": version.pk, "query_set": query_set.pk, "config": {"max_steps": 1}},
        "policy": {"corpus": corpus.pk, "model_version": child.pk, "allow_reindex": False},
        "reindex": {"corpus": corpus.pk, "model_version": child.pk},
        "audit": {
            "index": real.pk,
            "concept": "vitamin D",
            "queries": VITAMIN_D,
            "message": MESSAGE,
            "budget": 1,
            "trigger_len": 4,
            "positions": 2,
        },
    }
    return {"valid": valid, "foreign_corpus": foreign, "empty": CorpusFactory(owner=user)}


def _tables() -> int:
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'vec_index_%%'")
        return cur.fetchone()[0]


def _submit(api, kind, params):
    return api.post("/api/v1/jobs/", {"kind": kind, "params": params}, format="json")


def _assert_refused(response, path: str, *, statuses=(400, 404)) -> dict:
    assert response.status_code in statuses, (path, response.status_code, response.content)
    assert response["Content-Type"].startswith("application/json"), response.content[:200]
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    fields = error["details"].get("fields") or {error["details"].get("field", ""): []}
    named = [f for f in fields if f == path or f.startswith(path + ".") or f.startswith(path + "[")]
    assert named or error["details"].get("field", "").startswith(path), (path, error)
    assert path.split(".")[-1] in error["message"] or path in error["message"], (path, error)
    return error


def test_valid_submissions_of_every_kind_are_accepted(api, world):
    submitted = {}
    for kind, params in world["valid"].items():
        if kind == "reindex":  # a queued policy job of the same corpus would refuse it (409)
            cancel = api.post(f"/api/v1/jobs/{submitted['policy']}/cancel/")
            assert cancel.status_code in (200, 202), cancel.content
        response = _submit(api, kind, params)
        assert response.status_code == 202, (kind, response.content)
        submitted[kind] = response.json()["id"]


# (kind, params overrides, the field path the error must name)
KNOWN = [
    ("embed", {"chunking": "chunk", "chunk_window": "x"}, "params.chunk_window"),
    ("embed", {"chunking": "chunk", "chunk_overlap": "y"}, "params.chunk_overlap"),
    ("embed", {"encoder": "fake:x"}, "params.encoder"),
    ("embed", {"encoder": "fake:99999999"}, "params.encoder"),
    ("embed", {"encoder": "fakeorg/model"}, "params.encoder"),
    ("embed", {"activate": "maybe"}, "params.activate"),
    ("embed", {"batch_size": 0}, "params.batch_size"),
    ("embed", {"batch_size": "64"}, "params.batch_size"),
    (
        "embed",
        {"chunking": "chunk", "chunk_window": 64, "chunk_overlap": 63},
        "params.chunk_overlap",
    ),
    ("embed", {"chunking": "chunk", "chunk_window": 4096}, "params.chunk_window"),
    ("embed", {"storage": "float8"}, "params.storage"),
    ("embed", {"colour": "blue"}, "params.colour"),
    ("ingest", {"corpus": "x"}, "params.corpus"),
    ("ingest", {"path": "../../etc/passwd"}, "params.path"),
    ("ingest", {"path": "malformed/missing.jsonl"}, "params.path"),
    ("ingest", {"mapping": {"id": 5}}, "params.mapping"),
    ("evaluate", {"k": "12"}, "params.k"),
    ("evaluate", {"k": 0}, "params.k"),
    ("evaluate", {"mode": "exact", "ef_search": 40}, "params.ef_search"),
    ("finetune", {"config": {"lr": "fast"}}, "params.config.lr"),
    ("finetune", {"config": {"epochs": 1.5}}, "params.config.epochs"),
    ("finetune", {"config": {"warp": 9}}, "params.config.warp"),
    ("finetune", {"config": {"temperature": 0}}, "params.config.temperature"),
    ("finetune", {"config": {"temperature": "warm"}}, "params.config.temperature"),
    ("finetune", {"config": "s"}, "params.config"),
    ("finetune", {"training_set": "abc"}, "params"),
    ("policy", {"tolerance": 2}, "params.tolerance"),
    ("policy", {"metric": "bleu"}, "params.metric"),
    ("policy", {"corpus": None, "query_set": 1}, "params.query_set"),
    ("reindex", {"gate": {"query_set": "x"}}, "params.gate.query_set"),
    ("reindex", {"gate": {"tolerance": 5}}, "params.gate"),
    ("reindex", {"gate": "strict"}, "params.gate"),
    ("audit", {"budget": "ten"}, "params.budget"),
    ("audit", {"queries": "vitamin d"}, "params.queries"),
    ("audit", {"queries": [1, 2]}, "params.queries"),
    ("audit", {"held_in": 2}, "params.held_in"),
]


@pytest.mark.parametrize(("kind", "overrides", "path"), KNOWN)
def test_known_malformed_params_are_refused_naming_the_field(api, world, kind, overrides, path):
    before = (Job.objects.count(), VectorIndex.objects.count(), _tables())
    response = _submit(api, kind, {**world["valid"][kind], **overrides})
    _assert_refused(response, path)
    assert (Job.objects.count(), VectorIndex.objects.count(), _tables()) == before


@pytest.mark.parametrize(
    "kind", ["ingest", "embed", "evaluate", "finetune", "policy", "reindex", "audit"]
)
@pytest.mark.parametrize("params", [[], "s", 5, None, [{"corpus": 1}]])
def test_params_that_are_not_an_object_are_refused(api, world, kind, params):
    _assert_refused(_submit(api, kind, params), "params", statuses=(400,))
    assert not Job.objects.exists()


def _wrong_values(field: serializers.Field) -> list:
    """Values of the wrong type (or range) for a field, by its declared type."""
    if isinstance(field, OwnedObjectField):
        return ["x", True, 1.5, [], {}, -1, 0]
    if isinstance(field, StrictIntegerField):
        return ["x", "12", True, 1.5, [], {}, -(10**12)]
    if isinstance(field, StrictFloatField):
        return ["x", True, [], {}, -1e12]
    if isinstance(field, StrictBooleanField):
        return ["maybe", "true", 1, [], {}]
    if isinstance(field, StrictChoiceField):
        return ["nonsense", 3, [], {}]
    if isinstance(field, StrictCharField):
        return [5, [], {}, True, "x" * 5000]
    if isinstance(field, serializers.ListField):
        return ["s", 5, {}, [1], [[]]]
    if isinstance(field, serializers.DictField):
        return ["s", 5, [], {"a": 5}]
    if isinstance(field, serializers.Serializer):
        return ["s", 5, [], {"zzz": 1}]
    raise AssertionError(f"no wrong values known for {type(field).__name__}")


def _cases():
    for kind in ["ingest", "embed", "evaluate", "finetune", "policy", "reindex", "audit"]:
        fields = job_kind_get(kind).params().fields
        for name, field in fields.items():
            yield kind, name, field


@pytest.mark.parametrize(("kind", "name", "field"), list(_cases()))
def test_every_field_of_every_kind_refuses_wrong_types(api, world, kind, name, field):
    before = (Job.objects.count(), VectorIndex.objects.count(), _tables())
    for value in _wrong_values(field):
        if value == "" or (
            isinstance(field, StrictCharField) and name == "concept" and value == ""
        ):
            continue
        params = {**world["valid"][kind], name: value}
        if name in ("chunk_window", "chunk_overlap"):
            params["chunking"] = "chunk"
        response = _submit(api, kind, params)
        if response.status_code == 202:  # a value valid for this field (e.g. a long concept)
            pytest.fail(f"{kind}.{name}={value!r} was accepted: {response.json()['params']}")
        _assert_refused(response, f"params.{name}")
    assert (Job.objects.count(), VectorIndex.objects.count(), _tables()) == before


@pytest.mark.parametrize(
    ("kind", "field"),
    [
        ("ingest", "corpus"),
        ("embed", "corpus"),
        ("reindex", "corpus"),
        ("finetune", "corpus"),
        ("evaluate", "corpus"),
        ("audit", "corpus"),
        ("policy", "corpus"),
    ],
)
def test_another_users_corpus_is_not_found(api, world, kind, field):
    params = {**world["valid"][kind], field: world["foreign_corpus"].pk}
    if kind in ("evaluate", "audit"):
        params.pop("index")
    error = _assert_refused(_submit(api, kind, params), f"params.{field}", statuses=(404,))
    assert error["code"] == "not_found"
    assert f"corpus {world['foreign_corpus'].pk} not found" in error["message"]


def test_an_embed_of_an_empty_corpus_is_refused(api, world):
    error = _assert_refused(
        _submit(api, "embed", {"corpus": world["empty"].pk}), "params.corpus", statuses=(400,)
    )
    assert "has no documents" in error["message"]
    assert not VectorIndex.objects.filter(corpus=world["empty"]).exists()


def test_a_bad_batch_size_leaves_no_orphan_index_or_table(api, world, user):
    corpus = CorpusFactory(owner=user)
    add_documents(corpus, numbered_texts(3))
    before = _tables()
    response = _submit(api, "embed", {"corpus": corpus.pk, "batch_size": 99999})
    _assert_refused(response, "params.batch_size", statuses=(400,))
    assert not VectorIndex.objects.filter(corpus=corpus).exists() and _tables() == before


def test_a_finetune_mining_another_corpus_than_its_query_sets_is_refused(api, world):
    # The query set's positives live in its own corpus; another corpus's index is no place
    # to mine their negatives from.
    params = {**world["valid"]["finetune"], "corpus": world["empty"].pk}
    error = _assert_refused(_submit(api, "finetune", params), "params.corpus", statuses=(400,))
    assert "is not the corpus of query set" in error["message"]
    assert not Job.objects.exists()
