"""The typed project config: `cia.yaml` is the single source of truth. Longer than 600
lines: one schema, every setting in one place.

Relative paths in the file (`data_dir`, a local codebase `url`, a model `path`, a question
set) resolve against the directory holding the file, so the same file works from any working
directory.
`${VAR}` in a string value is replaced by that environment variable, so secrets (a Qdrant
API key) stay out of the file, like a Helm value fed from a Secret.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CONFIG_ENV_VAR = "CIA_CONFIG"
DEFAULT_CONFIG_NAME = "cia.yaml"
_log = logging.getLogger(__name__)
REPO_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# ${VAR} or ${VAR:-default}: the default keeps the embedded config usable with nothing set.
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


if TYPE_CHECKING:
    from cia_assets.lib.core.layout import DataLayout


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GitCredentials(_Strict):
    """How git signs in to a private remote, kept out of the URL (a URL is printed in errors
    and stored in run logs and snapshot metadata). Besides these, git's own configuration
    (a credential helper, ~/.ssh) applies as for any git command the user runs."""

    username: str | None = Field(
        default=None, description="https user name (for an access token, the name the host expects)"
    )
    password_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="environment variable holding the https password or access token",
    )
    ssh_key: Path | None = Field(default=None, description="private key file for an ssh URL")


class CodebaseConfig(_Strict):
    """One git repository to index."""

    url: str = Field(description="git URL (https, ssh, file://) or a local path to a git repository")
    credentials: GitCredentials | None = None
    branch: str = "main"
    id: str | None = Field(default=None, description="repo id; default: the URL's last path segment")
    web_url: str | None = Field(
        default=None, description="browsable base URL; default: derived from an https/ssh URL"
    )
    include: tuple[str, ...] = ("**",)
    exclude: tuple[str, ...] = ()

    @field_validator("url", "branch")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @field_validator("url")
    @classmethod
    def _no_password_in_url(cls, value: str) -> str:
        # The value is never echoed: it holds the secret.
        if "://" in value and (urlparse(value).password or "") != "":
            raise ValueError(
                "the URL carries a password or token, which would be printed in errors and stored in "
                "run logs: remove it, and name the environment variable holding it in "
                "`credentials: {username: ..., password_env: ...}` (or an ssh URL and `credentials.ssh_key`)"
            )
        return value

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str | None) -> str | None:
        if value is not None and not REPO_ID_PATTERN.match(value):
            raise ValueError(
                f"{value!r} is not a valid repo id (letters, digits, '.', '_', '-'; at most 100)"
            )
        return value

    @property
    def repo_id(self) -> str:
        if self.id:
            return self.id
        tail = self.url.rstrip("/").replace(":", "/").rsplit("/", 1)[-1]
        if tail.endswith(".git"):
            tail = tail[: -len(".git")]
        return tail

    @property
    def is_local_path(self) -> bool:
        return "://" not in self.url and not re.match(r"^[\w.-]+@[\w.-]+:", self.url)

    @property
    def resolved_web_url(self) -> str | None:
        if self.web_url:
            return self.web_url.rstrip("/")
        return derive_web_url(self.url)


def derive_web_url(url: str) -> str | None:
    """https://host/org/repo(.git) and git@host:org/repo(.git) map to https://host/org/repo."""
    scp_like = re.match(r"^[\w.-]+@([\w.-]+):(.+)$", url)
    if scp_like:
        host, path = scp_like.groups()
    else:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https", "ssh", "git") or not parsed.hostname:
            return None
        host, path = parsed.hostname, parsed.path
    path = path.strip("/")
    if path.endswith(".git"):
        path = path[: -len(".git")]
    return f"https://{host}/{path}" if path else None


class EmbeddingConfig(_Strict):
    """Which model embeds chunks. `path` is a local folder with model.onnx and tokenizer
    files (and the sentence-transformers files for bf16); unset means the packaged
    all-MiniLM-L6-v2, exported to ONNX once into data_dir. `precision`: `auto` is bf16 on a CPU
    with bf16 units (AMX, AVX512-BF16), fp32 otherwise (see `lib/indexing/embeddings.py`)."""

    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    path: Path | None = None
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    max_tokens: int = Field(default=256, gt=0)
    batch_size: int = Field(default=32, gt=0)
    threads: int | None = Field(default=None, gt=0)
    use_promoted_adapter: bool = Field(
        default=True,
        description="index with the retrieval adapter that passed its history benchmark and was "
        "promoted (`retrieval_embedding_model`), while `model` is the packaged all-MiniLM-L6-v2",
    )


class VectorStoreConfig(_Strict):
    """`embedded`: Qdrant's engine in-process, stored under `path` (default data_dir/qdrant).
    `server`: a Qdrant server at `url`."""

    backend: Literal["embedded", "server"] = "embedded"
    path: Path | None = None
    url: str | None = None
    api_key: str | None = None
    collection_prefix: str = "cia"

    @model_validator(mode="after")
    def _server_needs_url(self) -> VectorStoreConfig:
        if self.backend == "server" and not self.url:
            raise ValueError("backend 'server' needs 'url' (e.g. http://qdrant:6333)")
        return self


class ChunkingConfig(_Strict):
    max_lines: int = Field(default=120, ge=10)
    max_file_bytes: int = Field(default=1_000_000, gt=0)


class LlmConfig(_Strict):
    """What answers questions, the way `served_endpoint` makes it live.

    `llama_cpp`: a GGUF model served on 127.0.0.1 by llama-cpp-python's OpenAI-compatible
    server, started on demand: `model_path`, else the packaged model named by `model`
    (Qwen2.5-Coder-0.5B-Instruct by default, 1.5B too, joined into the machine's model cache
    by `make install`; SmolLM2-135M-Instruct, a tiny model for mechanics).
    `openai`: any OpenAI-compatible endpoint at `base_url` (vLLM on the GPU node, Ollama, a
    hosted API); `vllm` is the same with LoRA adapters served by name.
    """

    engine: Literal["llama_cpp", "vllm", "openai"] = "llama_cpp"
    model: str = "Qwen2.5-Coder-0.5B-Instruct"
    model_path: Path | None = Field(default=None, description="GGUF file (llama_cpp); default: packaged")
    # A prompt is read 1.4-1.7x faster in bf16 on a CPU with bf16 units and an answer written
    # ~20 % slower (`packaged_models.bf16_copy`): the first token is what people wait for.
    precision: Literal["auto", "packaged", "bf16"] = Field(
        default="auto", description="a packaged model's weights: bf16 where the CPU has bf16 units (auto)"
    )
    base_url: str | None = None
    api_key: str | None = None
    adapter: str | None = Field(default=None, description="LoRA adapter: a GGUF path or a vLLM name")
    adapter_version: str | None = None
    # 4096 of Qwen2.5-Coder's 32k: on 2 CPU cores prompt reading (75-200 tokens/s for the 0.5B)
    # bounds the first token, so the code shown is sized by `answering.code_tokens`, not this.
    context_tokens: int = Field(default=4096, ge=512, description="the model's context window")
    max_answer_tokens: int = Field(default=384, ge=16)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    threads: int = Field(default=2, gt=0)
    host: str = "127.0.0.1"
    port: int = Field(default=8601, gt=0, lt=65536, description="first port tried for a local server")
    request_timeout_s: float = Field(default=120.0, gt=0)
    drain_s: float = Field(
        default=30.0, ge=0, description="how long a replaced local server keeps serving requests in flight"
    )
    idle_stop_s: float = Field(
        default=900.0,
        ge=0,
        description="a local server started on demand (`cia ask`, MCP) stops after this long "
        "without a request; 0 = never. `cia serve` stops its own.",
    )

    @model_validator(mode="after")
    def _remote_needs_url(self) -> LlmConfig:
        if self.engine != "llama_cpp" and not self.base_url:
            raise ValueError(f"engine {self.engine!r} needs 'base_url' (e.g. http://vllm:8000/v1)")
        return self


class RerankerConfig(_Strict):
    """An LLM that re-ranks the first files of a file search by the likelihood of "yes, this is
    the file" (`lib/retrieval/rerank.py`). Unset `base_url`: off, the default: on 2 CPU cores
    the packaged 0.5B costs ~2.3 s a file and did not pay (README, "Measuring retrieval")."""

    base_url: str | None = None
    model: str | None = Field(default=None, description="model name at base_url")
    api_key: str | None = None
    files: int = Field(default=10, ge=2, le=50, description="first files judged per search")
    weight: float = Field(default=1.0, gt=0, description="of the LLM's order against the search's own")
    request_timeout_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _url_needs_model(self) -> RerankerConfig:
        if self.base_url and not self.model:
            raise ValueError("'base_url' is set, so 'model' is needed too (the model name at that endpoint)")
        return self


class RetrievalConfig(_Strict):
    """Search beyond the index's own lists."""

    reranker: RerankerConfig = RerankerConfig()
    mask_secrets: bool = Field(
        default=True,
        description="secrets detected in code (keys, tokens, passwords) are shown as <REDACTED> in "
        "search results, an answer's sources and the source view; the model is shown them masked",
    )


class AnsweringConfig(_Strict):
    """Retrieval and context assembly for an answer."""

    top_k: int = Field(default=8, ge=1, le=50, description="chunks retrieved per question")
    max_chunks_per_file: int = Field(default=2, ge=1)
    context_share: float = Field(
        default=0.45, gt=0.05, lt=0.9, description="at most this share of the model's context is code"
    )
    # The first token waits for the whole prompt to be read: about 13 s per 1,000 tokens for the
    # packaged 0.5B on 2 CPU cores, so the code shown is capped here (a GPU endpoint can take more).
    code_tokens: int = Field(default=800, ge=128, description="most tokens of code shown to the model")
    block_tokens: int = Field(default=400, ge=128, description="most tokens of one block of code")
    prefer_source_files: bool = Field(
        default=True,
        description="an explanation's context puts source files before tests, docs and vendored "
        "code (unless the question asks about those)",
    )
    # Calibrated on 109 real and 24 absent-feature questions (README, "Measuring answers").
    support_min_coverage: float = Field(
        default=0.8, ge=0.0, le=1.0, description="retrieved code with half the code names a question "
        "uses, or this share of its distinctive words, supports it: NOT's odds must then be higher"
    )  # fmt: skip
    abstain_not_found_odds: float = Field(
        default=0.3, ge=0.0, description="'not found' for a supported question when the model's first "
        "token is NOT at least this many times as likely as its likeliest other one (0 = never ask)"
    )  # fmt: skip
    abstain_unsupported_odds: float = Field(
        default=0.05, ge=0.0, description="the same odds for a question it does not support (0 = never ask)"
    )  # fmt: skip
    history_messages: int = Field(
        default=4,
        ge=0,
        le=20,
        description="earlier messages of a conversation a follow-up looks back on: the last user question "
        "among them is searched and asked with it (0: every question stands alone)",
    )
    prompt_name: str = "rag-code-assistant"
    prompt_label: str = "production"


class AccessToken(_Strict):
    """A bearer token and the repos it may see ("*" = all configured repos)."""

    name: str
    token: str = Field(min_length=8)
    repos: tuple[str, ...] = ("*",)


class ChatConfig(_Strict):
    """The chat app (web page, OpenAI-compatible API, feedback) and the MCP server."""

    host: str = "127.0.0.1"
    port: int = Field(default=8600, gt=0, lt=65536)
    public_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$",
        description="the address people open the chat app at (behind an ingress or proxy); citations "
        "of repos without a web_url link to its /source page; default http://{host}:{port}",
    )
    tokens: tuple[AccessToken, ...] = ()
    max_request_bytes: int = Field(
        default=2 * 1024 * 1024,
        ge=1024,
        description="larger request bodies are refused (413) before they are read",
    )
    metrics_listen: str | None = Field(
        default=None,
        pattern=r"^[^\s:]*:\d{1,5}$",
        description="HOST:PORT where `cia serve` also serves /metrics without a token, for a scraper "
        "(an address only it can reach); /metrics on the app's own port always needs a token",
    )

    @property
    def resolved_public_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        # A wildcard bind address is no place a browser can open.
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    @field_validator("tokens")
    @classmethod
    def _unique_tokens(cls, tokens: tuple[AccessToken, ...]) -> tuple[AccessToken, ...]:
        names = [t.name for t in tokens]
        if len(set(names)) != len(names):
            raise ValueError("token names must be unique")
        if len({t.token for t in tokens}) != len(tokens):
            raise ValueError("two entries share one token value")
        return tokens


class LangfuseConfig(_Strict):
    """Langfuse for traces, feedback scores and prompt management; unset `host` = off
    (traces still go to the local store in the data dir)."""

    host: str | None = None
    public_key: str | None = None
    secret_key: str | None = None
    timeout_s: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _keys_with_host(self) -> LangfuseConfig:
        if self.host and not (self.public_key and self.secret_key):
            raise ValueError("'host' is set, so 'public_key' and 'secret_key' are needed too")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.host)


class ModelEndpointConfig(_Strict):
    """An OpenAI-compatible endpoint used by the learning loop (teacher, judge): `base_url`
    and the `model` name there; without `base_url`, `model` is a packaged model run on a
    local llama.cpp server of its own for the job, and with neither (`model: null`), the live
    served endpoint (`serving.model_endpoints`)."""

    base_url: str | None = None
    model: str | None = Field(
        default=None, description="at base_url: its model name; else a packaged model; null: the served one"
    )
    api_key: str | None = None
    request_timeout_s: float = Field(default=120.0, gt=0)
    max_tokens: int = Field(default=384, ge=16)

    @model_validator(mode="after")
    def _url_needs_model(self) -> ModelEndpointConfig:
        if self.base_url and not self.model:
            raise ValueError("'base_url' is set, so 'model' is needed too (the model name at that endpoint)")
        return self


class DatasetsConfig(_Strict):
    """Synthetic Q&A from a teacher, and the training set built from it and golden answers."""

    # A larger model than the 0.5B that answers, so the student learns from better answers
    # than its own (issue: the loop distilled the served model into itself).
    teacher: ModelEndpointConfig = ModelEndpointConfig(model="Qwen2.5-Coder-1.5B-Instruct")
    synthetic_pairs: int = Field(default=200, ge=1, description="chunks sent to the teacher per run")
    min_chunk_lines: int = Field(default=4, ge=1)
    # Each training example shows its source and a distractor: two 30-line chunks and the
    # prompt fit the default `training.max_seq_tokens` (measured: two 39-line sources, 1,433).
    max_chunk_lines: int = Field(default=30, ge=5, description="longer chunks are cut to this many lines")
    eval_share: float = Field(default=0.2, gt=0.0, lt=1.0, description="share of source files held out")
    # A teacher writes only answerable questions; without these the student unlearns abstaining.
    abstention_share: float = Field(
        default=0.2,
        ge=0.0,
        le=1.0,
        description="share of training questions also shown without their source, answered NOT FOUND",
    )
    seed: int = 7
    # Strings with at least this Shannon entropy per character (and 20+ characters) are
    # redacted as likely keys; detect-secrets' own plugins catch the known formats.
    entropy_limit_base64: float = Field(default=4.5, gt=0)
    entropy_limit_hex: float = Field(default=3.0, gt=0)


class GpuTrainingConfig(_Strict):
    """The GPU path: unsloth QLoRA in a pod on the GPU node (dagster-k8s Pipes)."""

    namespace: str = "cia"
    image: str = "ghcr.io/example/cia-trainer:0.1.0"
    base_model: str = Field(
        default="unsloth/Qwen2.5-Coder-1.5B-Instruct-bnb-4bit",
        description="a model id or a path on the model cache volume",
    )
    gpu_resource: str = Field(default="nvidia.com/gpu", description="nvidia.com/gpu.shared with time-slicing")
    gpu_count: int = Field(default=1, ge=1)
    node_selector: dict[str, str] = {"nvidia.com/gpu.present": "true"}
    tolerations: tuple[dict[str, str], ...] = (
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    )
    model_cache_claim: str | None = Field(
        default="model-cache", description="PVC with base models, read-only"
    )
    model_cache_mount: str = "/models"
    data_claim: str = Field(
        default="cia-data", description="the PVC holding data_dir; the pod mounts it at the same path"
    )
    service_account: str | None = None
    memory: str = "16Gi"
    cpu: str = "4"
    load_in_4bit: bool = True
    deadline_seconds: int = Field(
        default=6 * 3600,
        ge=1,
        description="activeDeadlineSeconds: Kubernetes stops a trainer pod running longer, freeing the GPU",
    )


class TrainingConfig(_Strict):
    """The LoRA adapter: `cpu` trains in-process with peft on the packaged SmolLM2 (a smoke
    scale, same code path as the real one); `gpu` runs unsloth QLoRA as a Kubernetes pod."""

    backend: Literal["cpu", "gpu"] = "cpu"
    retrieval_adapter_backend: Literal["cpu", "gpu"] = Field(
        default="cpu",
        description="where `retrieval_adapter` fine-tunes the embedding model: in process (22 M "
        "parameters train on CPU) or in the trainer pod on the GPU node (the `gpu` settings)",
    )
    registered_model: str = "cia-code-assistant"
    max_steps: int = Field(default=60, ge=1)
    learning_rate: float = Field(default=2e-4, gt=0)
    batch_size: int = Field(default=4, ge=1)
    max_seq_tokens: int = Field(default=1536, ge=64, description="longer examples are skipped, and counted")
    lora_r: int = Field(default=8, ge=1)
    lora_alpha: int = Field(default=16, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    seed: int = 7
    gpu: GpuTrainingConfig = GpuTrainingConfig()


class MlflowConfig(_Strict):
    """Experiment tracking and the model registry; unset `tracking_uri` = a SQLite store in
    data_dir (no server needed)."""

    tracking_uri: str | None = None
    experiment: str = "cia-lora"


class EvaluationConfig(_Strict):
    """How adapters are judged on the held-out split before they may serve."""

    # The 1.5B judges the 0.5B's answers (and the adapters'); a model never judges itself.
    judge: ModelEndpointConfig = ModelEndpointConfig(model="Qwen2.5-Coder-1.5B-Instruct")
    max_questions: int = Field(default=50, ge=1)
    top_k: int = Field(default=8, ge=1, le=50)
    ragas: bool = Field(
        default=True, description="faithfulness, relevancy, context precision/recall from the judge"
    )
    history_cases: int = Field(default=20, ge=0, description="commit->files cases mined per repo (0 = off)")
    question_sets: list[Path] = Field(
        default_factory=list,
        description="fixed question sets (JSONL, SWE-QA's format; `absent: true` rows should be "
        "answered 'not found') asked of every compared model beside the eval split",
    )


class PromotionConfig(_Strict):
    """The gate in front of `served_endpoint` and the canary share for a new adapter."""

    max_citation_validity_drop: float = Field(default=0.05, ge=0.0, le=1.0)
    max_cite_hit_drop: float = Field(
        default=0.05, ge=0.0, le=1.0, description="share of answers citing the question's source file"
    )
    max_identifier_recall_drop: float = Field(
        default=0.1, ge=0.0, le=1.0, description="share of the reference's identifiers an answer names"
    )
    max_grounded_rate_drop: float = Field(
        default=0.05, ge=0.0, le=1.0, description="share of checked names and quotes the sources hold"
    )
    max_abstention_drop: float = Field(
        default=0.1, ge=0.0, le=1.0, description="share of absent-feature questions answered 'not found'"
    )
    max_faithfulness_drop: float = Field(default=0.05, ge=0.0, le=1.0)
    canary_share: float = Field(
        default=0.1, ge=0.0, le=1.0, description="share of questions for the challenger"
    )


class FeedbackLoopConfig(_Strict):
    """When user feedback starts a new round of analytics, dataset and adapter."""

    min_new_feedback: int = Field(
        default=20, ge=1, description="new votes (one per voter and answer) that start a round"
    )
    min_voters: int = Field(
        default=2,
        ge=1,
        description="distinct voters among them: one token alone cannot start training",
    )


class CiaConfig(_Strict):
    config_path: Path
    data_dir: Path
    codebases: tuple[CodebaseConfig, ...]
    embedding: EmbeddingConfig = EmbeddingConfig()
    vector_store: VectorStoreConfig = VectorStoreConfig()
    chunking: ChunkingConfig = ChunkingConfig()
    llm: LlmConfig = LlmConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    answering: AnsweringConfig = AnsweringConfig()
    chat: ChatConfig = ChatConfig()
    langfuse: LangfuseConfig = LangfuseConfig()
    datasets: DatasetsConfig = DatasetsConfig()
    training: TrainingConfig = TrainingConfig()
    mlflow: MlflowConfig = MlflowConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    promotion: PromotionConfig = PromotionConfig()
    feedback: FeedbackLoopConfig = FeedbackLoopConfig()

    @model_validator(mode="after")
    def _unique_repo_ids(self) -> CiaConfig:
        seen: dict[str, str] = {}
        for codebase in self.codebases:
            if not REPO_ID_PATTERN.match(codebase.repo_id):
                raise ValueError(
                    f"repo id {codebase.repo_id!r} derived from {codebase.url!r} is not valid; set 'id'"
                )
            if codebase.repo_id in seen:
                raise ValueError(
                    f"repo id {codebase.repo_id!r} is used by both {seen[codebase.repo_id]!r} and "
                    f"{codebase.url!r}; set a distinct 'id'"
                )
            seen[codebase.repo_id] = codebase.url
        for position, token in enumerate(self.chat.tokens):
            unknown = [r for r in token.repos if r != "*" and r not in seen]
            if unknown:
                raise ValueError(
                    f"chat.tokens[{position}] ({token.name}): unknown repo(s) {', '.join(unknown)}"
                )
        return self

    def codebase(self, repo_id: str) -> CodebaseConfig:
        for codebase in self.codebases:
            if codebase.repo_id == repo_id:
                return codebase
        known = ", ".join(c.repo_id for c in self.codebases) or "none"
        raise KeyError(f"unknown repo {repo_id!r} in {self.config_path} (configured: {known})")

    @property
    def layout(self) -> DataLayout:
        """Where each stage keeps its state under `data_dir`: the one way to reach a path."""
        from cia_assets.lib.core.layout import DataLayout

        return DataLayout(self.data_dir)

    @property
    def repo_ids(self) -> list[str]:
        return [c.repo_id for c in self.codebases]

    def clone_url(self, codebase: CodebaseConfig) -> str:
        """What git clones: local paths resolve against the config file's directory."""
        if codebase.is_local_path:
            return str((self.config_path.parent / codebase.url).resolve())
        return codebase.url

    @property
    def vector_store_path(self) -> Path:
        return self.vector_store.path or self.data_dir / "qdrant"


_SECTIONS = (
    "embedding", "vector_store", "chunking", "llm", "retrieval", "answering", "chat", "langfuse",
    "datasets", "training", "mlflow", "evaluation", "promotion", "feedback",
)  # fmt: skip


class LiveConfig:
    """The config of a long-running server, re-read when the file changes (tokens rotate live).
    An edit that breaks the file does not take the server down: it keeps the last valid config,
    logs the error (file and key) once, and `error` says what is wrong until a valid file is
    read again."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = resolve_config_path(path)
        self.error: str | None = None
        self._last: CiaConfig | None = None
        self._lock = threading.Lock()

    def current(self) -> CiaConfig:
        """The file's config, or the last valid one while it is broken (ConfigError when it
        has never been valid)."""
        try:
            config = load_config(self.path)
        except ConfigError as error:
            with self._lock:
                if self._last is None:
                    raise
                message = str(error)
                if message != self.error:
                    _log.error("%s; serving with the last valid configuration until it is fixed", message)
                self.error = message
                return self._last
        with self._lock:
            if self.error is not None:
                _log.warning("%s: valid again, in use", self.path)
                self.error = None
            self._last = config
        return config


def resolve_config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--config wins, then $CIA_CONFIG, then ./cia.yaml."""
    chosen = explicit or os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_NAME
    return Path(chosen).expanduser().resolve()


def load_config(path: str | os.PathLike[str] | None = None) -> CiaConfig:
    """Read and validate a config file; every problem raises ConfigError naming the file."""
    config_path = resolve_config_path(path)
    if not config_path.is_file():
        raise ConfigError(f"{config_path}: config file not found (set --config or ${CONFIG_ENV_VAR})")
    stat = config_path.stat()
    return _load_cached(config_path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _load_cached(config_path: Path, _mtime_ns: int, _size: int) -> CiaConfig:
    try:
        raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{config_path}: not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{config_path}: expected a mapping at the top level, got {type(raw).__name__}")
    # What a cia.yaml may hold at its top level: the schema's fields (config_path is the loader's).
    known = [name for name in CiaConfig.model_fields if name != "config_path"]
    unknown = sorted(str(key) for key in raw if key not in known)
    if unknown:
        # Before "required" checks: `codebase:` (a typo) should be named, not reported as a
        # missing `codebases`.
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, 1)
            hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
        raise ConfigError(
            f"{config_path}: unknown top-level key(s) {', '.join(hints)}; known: {', '.join(known)}"
        )
    raw = _expand_env(raw, config_path, ())
    # A section whose keys are all commented out reads as null: it means "the defaults".
    for section in _SECTIONS:
        if section in raw and raw[section] is None:
            del raw[section]
        elif isinstance(raw.get(section), dict):
            # Same for a nested block (`teacher:` with only comments under it).
            raw[section] = {k: v for k, v in raw[section].items() if v is not None}
    base = config_path.parent
    for key in ("data_dir",):
        if isinstance(raw.get(key), str):
            raw[key] = str((base / raw[key]).resolve())
    for section, key in (("embedding", "path"), ("vector_store", "path"), ("llm", "model_path")):
        value = raw.get(section, {}).get(key) if isinstance(raw.get(section), dict) else None
        if isinstance(value, str):
            raw[section][key] = str((base / value).resolve())
    for codebase in raw.get("codebases") or []:
        credentials = codebase.get("credentials") if isinstance(codebase, dict) else None
        if isinstance(credentials, dict) and isinstance(credentials.get("ssh_key"), str):
            credentials["ssh_key"] = str((base / Path(credentials["ssh_key"]).expanduser()).resolve())
    sets = raw.get("evaluation", {}).get("question_sets") if isinstance(raw.get("evaluation"), dict) else None
    if isinstance(sets, list):
        raw["evaluation"]["question_sets"] = [
            str((base / value).resolve()) if isinstance(value, str) else value for value in sets
        ]
    if "data_dir" not in raw:
        raise ConfigError(f"{config_path}: data_dir: required (a directory for clones, indexes, caches)")
    if "codebases" not in raw:
        raise ConfigError(f"{config_path}: codebases: required (a list of {{url, branch}} entries)")
    try:
        return CiaConfig(config_path=config_path, **raw)
    except ValidationError as error:
        problems = "; ".join(f"{_format_location(issue['loc'])}: {issue['msg']}" for issue in error.errors())
        raise ConfigError(f"{config_path}: {problems}") from None
    except TypeError as error:
        raise ConfigError(f"{config_path}: {error}") from None


def _format_location(location: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in location:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def required_env_variables(config_path: Path) -> list[str]:
    """The variables a config file references without a default: what must be set to load it."""
    text = config_path.read_text(encoding="utf-8")
    return [m.group(1) for m in _ENV_REFERENCE.finditer(text) if m.group(2) is None]


def _expand_env(value: Any, config_path: Path, location: tuple[Any, ...]) -> Any:
    if isinstance(value, dict):
        return {k: _expand_env(v, config_path, (*location, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, config_path, (*location, i)) for i, v in enumerate(value)]
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name not in os.environ and default is not None:
                return default
            if name not in os.environ:
                raise ConfigError(
                    f"{config_path}: {_format_location(location)}: environment variable {name} is not set"
                )
            return os.environ[name]

        return _ENV_REFERENCE.sub(substitute, value)
    return value
