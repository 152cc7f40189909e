"""Which embedding model embeds a repo's chunks and its questions.

Three answers, one home:
- the configured model: cia.yaml's `embedding` (a folder in `path`, else the packaged
  all-MiniLM-L6-v2, exported to ONNX once into the data dir);
- the active model, what the next index run embeds with: the configured one, or the retrieval
  adapter that passed its gate and was promoted (`learning.retrieval_adapter_run.promote_candidate`),
  while `embedding.use_promoted_adapter` is on and cia.yaml's model is the packaged one (from
  whatever folder: adapters are fine-tuned from it);
- the model of an existing collection, named by its id in the index state: a question is
  embedded with the model its collection was built with, so a promotion (or a rollback) never
  compares a question and chunks embedded by different models, even while repos are re-indexed
  one after the other.

A promoted adapter is copied under its own id (`<data_dir>/models/retrieval-adapters/<id>/`),
never changed afterwards; `promoted.json` names it, and is replaced atomically.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cia_assets.config import CiaConfig
from cia_assets.lib.core.fsio import read_by_version, write_json_atomic
from cia_assets.lib.core.layout import DataLayout
from cia_assets.lib.indexing.embeddings import (
    ADAPTER_RECORD,
    PACKAGED_MODEL,
    EmbeddingModelError,
    packaged_model_dir,
)

PROMOTED_RECORD = "promoted.json"
# What `learning.retrieval_adapter` names a trained model: a digest of its weights.
ADAPTER_ID = re.compile(r"cia-retrieval-adapter-[0-9a-f]{16}")


@dataclass(frozen=True)
class EmbeddingModel:
    """A model folder `Embedder` loads, and the id its vectors are known by."""

    model_id: str
    model_dir: Path


@dataclass(frozen=True)
class PromotedAdapter:
    """The retrieval adapter the index uses, and the verdict that let it in."""

    model_id: str
    model_dir: Path
    promoted_at: str
    verdict: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "model_dir": str(self.model_dir)}


def configured_model(config: CiaConfig) -> EmbeddingModel:
    """cia.yaml's model; the packaged one is exported on first use."""
    settings = config.embedding
    if settings.path is not None:
        return EmbeddingModel(settings.model, settings.path)
    if settings.model != PACKAGED_MODEL:
        raise EmbeddingModelError(
            f"{config.config_path}: embedding.model {settings.model!r} needs embedding.path "
            "(a local folder with model.onnx); only the packaged "
            f"{PACKAGED_MODEL!r} works without one, since no model hub is contacted"
        )
    return EmbeddingModel(settings.model, packaged_model_dir(config.layout.models))


def active_model(config: CiaConfig) -> EmbeddingModel:
    """What the next index run embeds with (see the module doc)."""
    settings = config.embedding
    # Adapters are fine-tuned from the packaged model: they stand in for it, not for another.
    if settings.use_promoted_adapter and settings.model == PACKAGED_MODEL:
        promoted = read_promoted_adapter(config.layout)
        if promoted is not None:
            return EmbeddingModel(promoted.model_id, promoted.model_dir)
    return configured_model(config)


def model_by_id(config: CiaConfig, model_id: str) -> EmbeddingModel:
    """The model an index was built with, by the id its index state records."""
    configured = config.embedding.model
    if model_id == configured:
        return configured_model(config)
    if ADAPTER_ID.fullmatch(model_id):
        folder = adapter_folder(config.layout, model_id)
        if (folder / ADAPTER_RECORD).exists():
            return EmbeddingModel(model_id, folder)
    raise EmbeddingModelError(
        f"an index was built with the embedding model {model_id!r}, which is neither cia.yaml's "
        f"embedding.model ({configured!r}) nor a retrieval adapter under {config.layout.retrieval_adapters}; "
        "re-index it (`cia index --full`)"
    )


def adapter_folder(layout: DataLayout, model_id: str) -> Path:
    """Where a promoted adapter is kept, under its id (which is all a folder name may be)."""
    if not ADAPTER_ID.fullmatch(model_id):
        raise EmbeddingModelError(
            f"{model_id!r} is not a retrieval adapter id (cia-retrieval-adapter-<16 hex>)"
        )
    return layout.retrieval_adapters / model_id


def promoted_record(layout: DataLayout) -> Path:
    return layout.retrieval_adapters / PROMOTED_RECORD


def read_promoted_adapter(layout: DataLayout) -> PromotedAdapter | None:
    """The promoted adapter, read once per version of its record (questions ask on every call)."""
    return read_by_version(promoted_record(layout), _parse_promoted)


def _parse_promoted(path: Path) -> PromotedAdapter | None:
    data = json.loads(path.read_text())
    if not data.get("model_id"):  # a rollback to the configured model
        return None
    return PromotedAdapter(
        model_id=str(data["model_id"]),
        model_dir=Path(str(data["model_dir"])),
        promoted_at=str(data["promoted_at"]),
        verdict=dict(data.get("verdict") or {}),
    )


def write_promoted_adapter(layout: DataLayout, adapter: PromotedAdapter | None, *, at: str) -> None:
    """Name the adapter the index uses from now on; None goes back to the configured model."""
    record = adapter.to_json() if adapter else {"model_id": None, "rolled_back_at": at}
    write_json_atomic(promoted_record(layout), record)
