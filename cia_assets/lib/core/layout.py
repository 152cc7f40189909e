"""Where each stage keeps its state under the data dir, and how collections are named."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The files inside a dataset version (see `synthetic_datasets`, `training_datasets`).
PAIRS_FILE = "pairs.jsonl"
TRAIN_FILE = "train.jsonl"
EVAL_FILE = "eval.jsonl"


@dataclass(frozen=True)
class DataLayout:
    """Where each stage keeps its state under `data_dir`."""

    data_dir: Path

    def mirror(self, repo_id: str) -> Path:
        return self.data_dir / "git" / f"{repo_id}.git"

    def snapshot(self, repo_id: str) -> Path:
        return self.data_dir / "snapshots" / f"{repo_id}.json"

    def chunks(self, repo_id: str) -> Path:
        return self.data_dir / "chunks" / f"{repo_id}.jsonl"

    def chunks_meta(self, repo_id: str) -> Path:
        return self.data_dir / "chunks" / f"{repo_id}.meta.json"

    def code_symbols(self, repo_id: str) -> Path:
        """What each chunked file defines, references and imports (`indexing.code_symbols`)."""
        return self.data_dir / "graph" / f"{repo_id}.symbols.jsonl"

    def code_graph(self, repo_id: str) -> Path:
        """The repo's file graph built from those symbols (`indexing.code_graph`)."""
        return self.data_dir / "graph" / f"{repo_id}.npz"

    def index_state(self, repo_id: str) -> Path:
        return self.data_dir / "index" / f"{repo_id}.json"

    @property
    def embedding_cache(self) -> Path:
        return self.data_dir / "embeddings.sqlite"

    @property
    def models(self) -> Path:
        return self.data_dir / "models"

    @property
    def retrieval_adapters(self) -> Path:
        """Fine-tuned embedding models (`learning.retrieval_adapter`): the last trained
        `candidate/`, every promoted one under its id, and `promoted.json` naming the one the
        index uses."""
        return self.models / "retrieval-adapters"

    @property
    def serving(self) -> Path:
        """The served endpoint's record, its history, and local model servers' logs."""
        return self.data_dir / "serving"

    @property
    def retrieval_eval(self) -> Path:
        """The retrieval harness's own data dir: its index moves to old commits."""
        return self.data_dir / "retrieval-eval"

    @property
    def datasets(self) -> Path:
        """Synthetic Q&A, training and eval splits, one folder per materialization."""
        return self.data_dir / "datasets"

    @property
    def synthetic_datasets(self) -> Path:
        """Versions of `synthetic_qa_dataset` (`artifacts`), each with its `PAIRS_FILE`."""
        return self.datasets / "synthetic"

    @property
    def training_datasets(self) -> Path:
        """Versions of `training_dataset`, each with its `TRAIN_FILE` and `EVAL_FILE`."""
        return self.datasets / "training"

    @property
    def adapters(self) -> Path:
        """Trained LoRA adapters (peft folder + GGUF for llama.cpp), one folder per run."""
        return self.data_dir / "adapters"

    @property
    def mlflow(self) -> Path:
        """The embedded MLflow tracking + registry store (SQLite) and its artifacts."""
        return self.data_dir / "mlflow"

    @property
    def evaluation(self) -> Path:
        """Evaluation reports and the promotion verdict for each challenger."""
        return self.data_dir / "evaluation"

    @property
    def analytics(self) -> Path:
        """The dbt models' DuckDB file and the trace snapshot they read."""
        return self.data_dir / "analytics"

    @property
    def traces(self) -> Path:
        """Every trace and feedback event, kept before forwarding to Langfuse."""
        return self.data_dir / "traces.duckdb"

    @property
    def local_token(self) -> Path:
        """The chat app's token when cia.yaml lists none (made on first use, owner-only)."""
        return self.data_dir / "chat-token"


def collection_alias(prefix: str, repo_id: str) -> str:
    return f"{prefix}-{repo_id}"
