"""Registering model versions: spec read from the directory, idempotent, clear failures."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from django.core.management import CommandError, call_command

from embedhub.core.errors import ApplicationError
from embedhub.registry.models import ModelVersion, RegistrySettings
from embedhub.registry.services import (
    model_version_default,
    model_version_register,
    registry_default_set,
)
from tests.factories import ModelVersionFactory
from workers.ml.spec import default_model_path

pytestmark = pytest.mark.django_db


def test_register_base_reads_the_spec_of_the_shipped_model():
    version = model_version_register()
    assert version.model.name == "all-MiniLM-L6-v2" and version.version == 1
    assert version.artifact_path == str(default_model_path())
    assert (version.dimension, version.pooling, version.normalize, version.max_tokens) == (
        384,
        "mean",
        True,
        256,
    )
    assert version.status == "ready" and version.parent is None
    assert version.provenance["kind"] == "bundled"


def test_register_is_idempotent_for_the_same_source_and_name():
    first = model_version_register()
    assert model_version_register() == first
    assert (
        model_version_register(source=str(default_model_path()), name="all-MiniLM-L6-v2") == first
    )
    assert ModelVersion.objects.count() == 1


def test_default_registers_the_base_once_and_a_newer_version_never_replaces_it(tmp_path):
    base = model_version_default()
    assert model_version_default() == base
    assert RegistrySettings.objects.get().default_version == base  # explicit from the start
    child_dir = shutil.copytree(
        default_model_path(), tmp_path / "child", ignore=shutil.ignore_patterns("*.safetensors")
    )
    child = model_version_register(
        source=str(child_dir), parent=base, training_params={"epochs": 1}
    )
    assert (child.model.name, child.version, child.parent, child.training_params) == (
        "all-MiniLM-L6-v2",
        2,
        base,
        {"epochs": 1},
    )
    assert child.visibility == "shared" and child.owner is None  # staff-registered
    assert model_version_default() == base  # newer and shared, but nobody chose it


def test_staff_choose_the_default_among_shared_ready_versions(tmp_path, user):
    base = model_version_default()
    child_dir = shutil.copytree(
        default_model_path(), tmp_path / "child", ignore=shutil.ignore_patterns("*.safetensors")
    )
    private = model_version_register(source=str(child_dir), parent=base, owner=user)
    assert (private.visibility, private.owner) == ("private", user)
    with pytest.raises(ApplicationError, match="private"):
        registry_default_set(version=private)
    assert model_version_default() == base

    shared = ModelVersionFactory(model=base.model, parent=base, version=3)
    registry_default_set(version=shared)
    assert model_version_default() == shared
    ModelVersion.objects.filter(pk=shared.pk).update(status="archived")
    with pytest.raises(ApplicationError) as refused:  # never a silent fallback to another
        model_version_default()
    assert refused.value.code == "default_version_unusable"


def test_local_directory_spec_with_cls_pooling_and_prefixes(tmp_path):
    model_dir = tmp_path / "e5-like"
    (model_dir / "1_Pooling").mkdir(parents=True)
    (model_dir / "config.json").write_text(
        json.dumps({"hidden_size": 768, "max_position_embeddings": 514})
    )
    (model_dir / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True})
    )
    (model_dir / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "query: ", "passage": "passage: "}})
    )
    version = model_version_register(source=str(model_dir))
    assert version.model.name == "e5-like"
    assert (version.dimension, version.pooling, version.max_tokens) == (768, "cls", 512)
    assert (version.query_prefix, version.document_prefix) == ("query: ", "passage: ")


def test_child_with_another_dimension_is_refused(tmp_path):
    base = model_version_register()
    other = tmp_path / "wide"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"hidden_size": 1024}))
    with pytest.raises(ApplicationError, match="must keep its parent's dimension"):
        model_version_register(source=str(other), parent=base)


def test_hub_id_fails_quickly_with_a_clear_error(monkeypatch, settings, tmp_path):
    settings.ARTIFACT_ROOT = tmp_path
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # A reserved TLD: resolution fails without network, so the probe answers at once.
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    started = time.monotonic()
    with pytest.raises(ApplicationError) as info:
        model_version_register(source="sentence-transformers/all-mpnet-base-v2")
    assert time.monotonic() - started < 10
    assert info.value.code == "hub_unreachable"
    assert "cannot download 'sentence-transformers/all-mpnet-base-v2'" in info.value.message
    assert "register the local directory" in info.value.message
    assert not ModelVersion.objects.exists()


def test_hub_id_in_offline_mode_fails_without_touching_the_network(monkeypatch, settings, tmp_path):
    settings.ARTIFACT_ROOT = tmp_path
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ApplicationError, match="HF_HUB_OFFLINE is set"):
        model_version_register(source="BAAI/bge-small-en-v1.5")


@pytest.mark.parametrize(
    "source,message",
    [
        ("/no/such/dir", "neither an existing directory nor a Hugging Face Hub id"),
        ("not a hub id!", "neither an existing directory nor a Hugging Face Hub id"),
    ],
)
def test_bad_sources_are_refused(source, message):
    with pytest.raises(ApplicationError, match=message):
        model_version_register(source=source)


def test_directory_without_config_or_a_file_is_refused(tmp_path):
    with pytest.raises(ApplicationError, match="has no config.json"):
        model_version_register(source=str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ApplicationError, match="is a file"):
        model_version_register(source=str(tmp_path / "weights.bin"))


def test_unknown_extra_fields_are_refused():
    with pytest.raises(ApplicationError, match="cannot set bogus"):
        model_version_register(bogus=1)


def test_register_model_command_with_no_arguments_registers_the_base(capsys):
    call_command("register_model")
    call_command("register_model")
    out = capsys.readouterr().out
    assert "all-MiniLM-L6-v2 v1" in out and "dimension 384" in out
    assert ModelVersion.objects.count() == 1


def test_register_model_command_reports_errors(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CommandError, match="cannot download"):
        call_command("register_model", "org/model", "--name", "x")
