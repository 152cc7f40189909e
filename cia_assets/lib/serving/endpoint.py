"""The served endpoint: the record of what answers questions, and its blue-green switch.

`serving/endpoint.json` names the live endpoint (engine, base URL, model, adapter and its
version, the local server's pid); `serving/history.jsonl` keeps every record ever made live,
so a rollback is one more switch. Readers (the chat app, `cia ask`, MCP) read the record
before each question, so a switch takes effect on the next request, like a Service whose
selector moves to a new ReplicaSet; the old local server keeps serving what it has in flight
for `llm.drain_s` before it is stopped.

Who changes the record:
- `deploy_endpoint` (the `served_endpoint` asset): starts the configured model (or rolls back),
  health-checks it with a real completion, switches, drains and stops the old one.
- `ensure_endpoint` (before each question): keeps a healthy live record; restarts a local
  server that died, with the same model and adapter; starts one when there is no record yet.
  A record made on demand follows cia.yaml (its llm settings changed: a new server), while a
  record made by `deploy_endpoint` stays until the next deploy (an adapter promoted by the
  learning loop is not undone by someone's `cia ask`).
All changes hold an exclusive file lock, so two shells never start two servers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from cia_assets.config import CiaConfig
from cia_assets.lib.core.fsio import file_lock, write_json_atomic
from cia_assets.lib.core.records import utc_now
from cia_assets.lib.serving.llm_server import (
    LlmServerError,
    is_healthy,
    is_listening,
    process_alive,
    served_model_file,
    start_llama_server,
    stop_process,
)

log = logging.getLogger(__name__)
HEALTH_CACHE_S = 5.0
LOCAL_ENGINES = ("llama_cpp",)


class EndpointError(RuntimeError):
    """The endpoint cannot be made live or reached; the message names it."""


@dataclass(frozen=True)
class EndpointSpec:
    """What to serve: everything that defines the model behind the endpoint."""

    engine: str
    model: str
    base_url: str | None = None  # remote engines; local ones get theirs at start
    gguf: str | None = None  # local engines
    adapter: str | None = None
    adapter_version: str | None = None
    context_tokens: int = 2048
    threads: int = 2
    adapter_path: str | None = None  # vLLM: the peft folder it loads under the name `adapter`

    def with_adapter(self, adapter: str | None, version: str | None, path: str | None = None) -> EndpointSpec:
        return replace(self, adapter=adapter, adapter_version=version, adapter_path=path)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_config(cls, config: CiaConfig) -> EndpointSpec:
        llm = config.llm
        local = llm.engine in LOCAL_ENGINES
        return cls(
            engine=llm.engine,
            model=llm.model,
            base_url=None if local else (llm.base_url or "").rstrip("/"),
            gguf=str(served_model_file(config)) if local else None,
            adapter=llm.adapter,
            adapter_version=llm.adapter_version,
            context_tokens=llm.context_tokens,
            threads=llm.threads,
        )


@dataclass(frozen=True)
class EndpointRecord:
    version: int
    spec: EndpointSpec
    base_url: str
    started_at: str
    origin: str  # on-demand | deploy | rollback | restart
    pid: int | None = None
    log_path: str | None = None
    previous_version: int | None = None
    note: str | None = None
    # A challenger answering a share of questions beside this endpoint (a canary release).
    canary: EndpointRecord | None = None
    canary_share: float = 0.0

    @property
    def engine(self) -> str:
        return self.spec.engine

    @property
    def model(self) -> str:
        return self.spec.model

    @property
    def adapter(self) -> str | None:
        return self.spec.adapter

    @property
    def adapter_version(self) -> str | None:
        return self.spec.adapter_version

    @property
    def fingerprint(self) -> str:
        return self.spec.fingerprint

    @property
    def request_model(self) -> str:
        """The `model` a request names: vLLM serves each LoRA adapter under its own name,
        llama.cpp's server has the adapter loaded into its one model."""
        if self.spec.engine == "vllm" and self.spec.adapter:
            return self.spec.adapter
        return self.spec.model

    @property
    def is_local(self) -> bool:
        return self.spec.engine in LOCAL_ENGINES

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["fingerprint"] = self.fingerprint
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EndpointRecord:
        data = dict(data)
        data.pop("fingerprint", None)
        spec = EndpointSpec(**data.pop("spec"))
        canary = data.pop("canary", None)
        return cls(spec=spec, canary=cls.from_json(canary) if canary else None, **data)

    def pids(self) -> set[int]:
        """Local server processes this record keeps alive (its own and its canary's)."""
        found = {self.pid} if self.is_local and self.pid else set()
        return found | (self.canary.pids() if self.canary else set())


# ---------------------------------------------------------------------------------------------
# The record on disk
# ---------------------------------------------------------------------------------------------


def _paths(config: CiaConfig) -> tuple[Path, Path, Path]:
    serving = config.layout.serving
    return serving / "endpoint.json", serving / "history.jsonl", serving / ".lock"


def current_endpoint(config: CiaConfig) -> EndpointRecord | None:
    live, _, _ = _paths(config)
    if not live.exists():
        return None
    return EndpointRecord.from_json(json.loads(live.read_text()))


def endpoint_history(config: CiaConfig) -> list[EndpointRecord]:
    _, history, _ = _paths(config)
    if not history.exists():
        return []
    return [EndpointRecord.from_json(json.loads(line)) for line in history.read_text().splitlines() if line]


@contextmanager
def _locked(config: CiaConfig) -> Iterator[None]:
    _, _, lock_path = _paths(config)
    with file_lock(lock_path):
        yield


def _make_live(config: CiaConfig, record: EndpointRecord) -> None:
    live, history, _ = _paths(config)
    with history.open("a") as out:
        out.write(json.dumps(record.to_json()) + "\n")
    write_json_atomic(live, record.to_json())  # the switch: one atomic rename


# ---------------------------------------------------------------------------------------------
# Health
# ---------------------------------------------------------------------------------------------


class HealthCache:
    """When each endpoint last passed a health check, so that a question does not probe the
    model server every time (for HEALTH_CACHE_S). Each long-lived caller owns one (an
    `Answerer`, so the chat app and MCP server); a caller without one probes every time."""

    def __init__(self) -> None:
        self._passed_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def healthy(self, record: EndpointRecord, config: CiaConfig, *, cached: bool = True) -> bool:
        if record.is_local and not process_alive(record.pid):
            return False
        now = time.monotonic()
        with self._lock:
            if cached and now - self._passed_at.get(record.base_url, -1e9) < HEALTH_CACHE_S:
                return True
        if record.is_local:
            # Its process runs and its port listens: alive, even while a long answer keeps its
            # API busy (the model itself was checked when the server started).
            ok = is_listening(record.base_url)
        else:
            ok = is_healthy(record.base_url, timeout_s=5.0, api_key=config.llm.api_key)
        if ok:
            with self._lock:
                self._passed_at[record.base_url] = now
        return ok


@dataclass(frozen=True)
class EndpointHealth:
    """Whether the live endpoint answers now: `problem` says why not (None when it does)."""

    record: EndpointRecord | None
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def endpoint_health(config: CiaConfig, health: HealthCache | None = None) -> EndpointHealth:
    """Check the live endpoint as a question would (`HealthCache.healthy`), without starting or
    restarting anything: for readiness probes, which must not act."""
    health = health or HealthCache()
    record = current_endpoint(config)
    if record is None:
        return EndpointHealth(
            None, "no model endpoint is live yet (`cia serve` or the first question starts one)"
        )
    if health.healthy(record, config):
        return EndpointHealth(record, None)
    what = f"model server {record.model} ({record.engine}, endpoint v{record.version}) at {record.base_url}"
    if record.is_local and not process_alive(record.pid):
        return EndpointHealth(record, f"{what} is not running (pid {record.pid})")
    return EndpointHealth(record, f"{what} does not answer")


def _smoke_completion(record: EndpointRecord, config: CiaConfig) -> float:
    """A real one-token completion: the model is loaded and generates. Returns its latency."""
    started = time.perf_counter()
    try:
        chat_client(record, config).chat.completions.create(
            model=record.request_model, messages=[{"role": "user", "content": "Say OK."}], max_tokens=1
        )
    except Exception as error:
        raise EndpointError(
            f"{record.base_url} ({record.model}) failed a test completion: {error}"
        ) from error
    return (time.perf_counter() - started) * 1000


# ---------------------------------------------------------------------------------------------
# Starting, ensuring, deploying
# ---------------------------------------------------------------------------------------------


def _launch(
    config: CiaConfig,
    spec: EndpointSpec,
    *,
    version: int,
    origin: str,
    idle_stop_s: float = 0.0,
    owned: bool = False,
    **extra: Any,
) -> EndpointRecord:
    if spec.engine in LOCAL_ENGINES:
        if spec.gguf is None:
            raise EndpointError("a local endpoint needs a GGUF model file")
        local_config = config.model_copy(
            update={
                "llm": config.llm.model_copy(
                    update={
                        "model_path": Path(spec.gguf),
                        "context_tokens": spec.context_tokens,
                        "threads": spec.threads,
                    }
                )
            }
        )
        server = start_llama_server(
            local_config,
            log_dir=config.layout.serving / "servers",
            adapter=spec.adapter,
            alias=spec.model,
            idle_stop_s=idle_stop_s,
            # A server this process owns ends with it, even if it is killed before stopping it.
            exit_with_parent=owned,
        )
        return EndpointRecord(
            version=version,
            spec=spec,
            base_url=server.base_url,
            started_at=utc_now(),
            origin=origin,
            pid=server.pid,
            log_path=str(server.log_path),
            **extra,
        )
    base_url = spec.base_url or ""
    if not is_healthy(base_url, timeout_s=5.0, api_key=config.llm.api_key):
        raise EndpointError(f"the {spec.engine} endpoint {base_url} does not answer GET {base_url}/models")
    if spec.engine == "vllm" and spec.adapter and spec.adapter_path:
        _load_vllm_adapter(base_url, spec.adapter, spec.adapter_path, config.llm.api_key)
    return EndpointRecord(
        version=version, spec=spec, base_url=base_url, started_at=utc_now(), origin=origin, **extra
    )


def _load_vllm_adapter(base_url: str, name: str, path: str, api_key: str | None) -> None:
    """Ask vLLM to load a LoRA adapter from the shared volume under `name` (vLLM runs with
    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; an adapter already loaded under that name is fine)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.post(
            f"{base_url}/load_lora_adapter",
            json={"lora_name": name, "lora_path": path},
            headers=headers,
            timeout=120.0,
        )
    except httpx.HTTPError as error:
        raise EndpointError(f"vLLM at {base_url} did not load adapter {name}: {error}") from error
    if response.status_code >= 400 and "already" not in response.text.lower():
        raise EndpointError(
            f"vLLM at {base_url} refused adapter {name} from {path}: "
            f"{response.status_code} {response.text[:300]}"
        )


def choose_endpoint(
    config: CiaConfig, *, draw: Callable[[], float] = random.random, health: HealthCache | None = None
) -> EndpointRecord:
    """The endpoint for one question: the live one, or its canary for `canary_share` of the
    questions (a canary whose server is down is skipped, never a failed question)."""
    health = health or HealthCache()
    record = ensure_endpoint(config, health=health)
    canary = record.canary
    if canary is not None and record.canary_share > 0 and draw() < record.canary_share:
        if health.healthy(canary, config):
            return canary
        log.warning("canary %s of endpoint v%d is down; answering with the live model",
                    canary.spec.adapter, record.version)  # fmt: skip
    return record


def ensure_endpoint(
    config: CiaConfig,
    *,
    idle_stop_s: float | None = None,
    health: HealthCache | None = None,
    owned: bool = False,
) -> EndpointRecord:
    """A healthy live endpoint, started or restarted if needed (see the module docstring).

    A local server started here stops itself after `idle_stop_s` without a request (default
    `llm.idle_stop_s`): the command that started it does not stay to stop it. `cia serve`
    passes 0 and `owned`: it stops its server when it stops, and a server it started ends
    when it does, however it ends."""
    idle = config.llm.idle_stop_s if idle_stop_s is None else idle_stop_s
    health = health or HealthCache()
    record = current_endpoint(config)
    wanted = EndpointSpec.from_config(config)
    if record is not None and health.healthy(record, config) and _keeps(record, wanted):
        return record
    with _locked(config):
        record = current_endpoint(config)  # another process may have fixed it meanwhile
        if record is not None and health.healthy(record, config, cached=False):
            if _keeps(record, wanted):
                return record
            # An on-demand record whose settings changed in cia.yaml: replace it.
            new = _launch(config, wanted, version=record.version + 1, origin="on-demand",
                          idle_stop_s=idle, owned=owned, previous_version=record.version)  # fmt: skip
            _make_live(config, new)
            if record.is_local and record.pid and record.pid != new.pid:
                stop_process(record.pid)
            return new
        if record is None:
            new = _launch(config, wanted, version=1, origin="on-demand", idle_stop_s=idle, owned=owned)
        elif record.is_local:
            log.warning("model server of endpoint v%d is not running (stopped when idle, or died); "
                        "starting it", record.version)  # fmt: skip
            if record.pid and process_alive(record.pid):
                stop_process(record.pid)  # alive but not listening: hung, never left behind
            new = _launch(config, record.spec, version=record.version + 1, origin="restart",
                          idle_stop_s=idle, owned=owned, previous_version=record.version,
                          note=f"restart of v{record.version}")  # fmt: skip
            # The canary runs in its own process and keeps serving its share.
            new = replace(new, canary=record.canary, canary_share=record.canary_share)
        else:
            raise EndpointError(f"the {record.engine} endpoint {record.base_url} does not answer")
        _make_live(config, new)
        return new


def _keeps(record: EndpointRecord, wanted: EndpointSpec) -> bool:
    return record.origin != "on-demand" or record.fingerprint == wanted.fingerprint


def deploy_endpoint(
    config: CiaConfig,
    *,
    rollback: bool = False,
    spec: EndpointSpec | None = None,
    canary: EndpointSpec | None = None,
    canary_share: float = 0.0,
    note: str | None = None,
    log_line: Callable[[str], None] = log.info,
) -> tuple[EndpointRecord, EndpointRecord | None, float]:
    """Blue-green: start the new endpoint (and its canary), test them, switch, drain and stop
    the old servers. `spec` defaults to cia.yaml's llm settings.

    Returns (new, previous, test-completion latency in ms). On any failure before the switch
    the live record is untouched and every server started here is stopped."""
    with _locked(config):
        previous = current_endpoint(config)
        version = (previous.version if previous else 0) + 1
        if rollback:
            target = _rollback_target(config, previous)
            spec, origin, note = target.spec, "rollback", f"rollback to v{target.version}"
            canary, canary_share = (target.canary.spec if target.canary else None), target.canary_share
        else:
            spec, origin = spec or EndpointSpec.from_config(config), "deploy"
        log_line(f"starting {spec.engine} endpoint for {spec.model}" + (f" ({note})" if note else ""))
        started: list[EndpointRecord] = []
        try:
            new = _launch(config, spec, version=version, origin=origin,
                          previous_version=previous.version if previous else None, note=note)  # fmt: skip
            started.append(new)
            latency_ms = _smoke_completion(new, config)
            if canary is not None and canary_share > 0:
                log_line(
                    f"starting canary {canary.adapter or canary.model} for {canary_share:.0%} of questions"
                )
                canary_record = _launch(config, canary, version=version, origin="canary")
                started.append(canary_record)
                _smoke_completion(canary_record, config)
                new = replace(new, canary=canary_record, canary_share=canary_share)
        except (EndpointError, LlmServerError) as error:
            for record in started:
                if record.is_local and record.pid:
                    stop_process(record.pid)
            if isinstance(error, LlmServerError):
                raise EndpointError(str(error)) from error
            raise
        _make_live(config, new)
        log_line(f"endpoint v{new.version} is live at {new.base_url}")
    old_pids = (previous.pids() if previous is not None else set()) - new.pids()
    alive = [pid for pid in old_pids if process_alive(pid)]
    if alive and previous is not None:
        log_line(f"draining v{previous.version} for {config.llm.drain_s:.0f} s, then stopping pids {alive}")
        time.sleep(config.llm.drain_s)
        for pid in alive:
            stop_process(pid)
    return new, previous, latency_ms


def _rollback_target(config: CiaConfig, live: EndpointRecord | None) -> EndpointRecord:
    if live is None:
        raise EndpointError("nothing to roll back: no endpoint has been live yet")
    for record in reversed(endpoint_history(config)):
        if record.version < live.version and record.fingerprint != live.fingerprint:
            return record
    raise EndpointError(
        f"nothing to roll back to: every earlier record serves the same model as v{live.version}"
    )


@contextmanager
def temporary_endpoint(config: CiaConfig, spec: EndpointSpec, *, note: str) -> Iterator[EndpointRecord]:
    """An endpoint for `spec` that is never made live (evaluation compares models with it);
    a local server started for it is stopped on exit."""
    try:
        record = _launch(config, spec, version=0, origin="evaluation", note=note, owned=True)
    except LlmServerError as error:
        raise EndpointError(str(error)) from error
    try:
        yield record
    finally:
        if record.is_local and record.pid:
            stop_process(record.pid)


def stop_local_endpoint(config: CiaConfig) -> None:
    """Stop the live local server (the record stays: the next question restarts it)."""
    record = current_endpoint(config)
    if record is None:
        return
    for pid in record.pids():
        if process_alive(pid):
            stop_process(pid)


def chat_client(record: EndpointRecord, config: CiaConfig) -> Any:
    """The `openai` client for the endpoint: every LLM call goes through it (and through the
    egress redaction, when the endpoint is off this machine)."""
    from cia_assets.lib.serving.egress import openai_client

    return openai_client(
        record.base_url,
        api_key=config.llm.api_key if not record.is_local else None,
        timeout_s=config.llm.request_timeout_s,
        max_retries=1,
    )
