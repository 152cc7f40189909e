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

import fcntl
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cia_assets.config import CiaConfig
from cia_assets.lib.git_sync import utc_now, write_json_atomic
from cia_assets.lib.layout import DataLayout
from cia_assets.lib.llm_server import (
    is_healthy,
    is_listening,
    model_file,
    process_alive,
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
            gguf=str(model_file(config)) if local else None,
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
        return cls(spec=spec, **data)


# ---------------------------------------------------------------------------------------------
# The record on disk
# ---------------------------------------------------------------------------------------------


def _paths(config: CiaConfig) -> tuple[Path, Path, Path]:
    serving = DataLayout(config.data_dir).serving
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
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _make_live(config: CiaConfig, record: EndpointRecord) -> None:
    live, history, _ = _paths(config)
    with history.open("a") as out:
        out.write(json.dumps(record.to_json()) + "\n")
    write_json_atomic(live, record.to_json())  # the switch: one atomic rename
    _HEALTHY.pop(record.base_url, None)


# ---------------------------------------------------------------------------------------------
# Health
# ---------------------------------------------------------------------------------------------

_HEALTHY: dict[str, float] = {}
_HEALTHY_LOCK = threading.Lock()


def _healthy(record: EndpointRecord, config: CiaConfig, *, cached: bool = True) -> bool:
    if record.is_local and not process_alive(record.pid):
        return False
    now = time.monotonic()
    with _HEALTHY_LOCK:
        if cached and now - _HEALTHY.get(record.base_url, -1e9) < HEALTH_CACHE_S:
            return True
    if record.is_local:
        # Its process runs and its port listens: alive, even while a long answer keeps its
        # API busy (the model itself was checked when the server started).
        ok = is_listening(record.base_url)
    else:
        ok = is_healthy(record.base_url, timeout_s=5.0, api_key=config.llm.api_key)
    if ok:
        with _HEALTHY_LOCK:
            _HEALTHY[record.base_url] = now
    return ok


def _smoke_completion(record: EndpointRecord, config: CiaConfig) -> float:
    """A real one-token completion: the model is loaded and generates. Returns its latency."""
    started = time.perf_counter()
    try:
        chat_client(record, config).chat.completions.create(
            model=record.model, messages=[{"role": "user", "content": "Say OK."}], max_tokens=1
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
    config: CiaConfig, spec: EndpointSpec, *, version: int, origin: str, **extra: Any
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
            log_dir=DataLayout(config.data_dir).serving / "servers",
            adapter=spec.adapter,
            alias=spec.model,
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
    return EndpointRecord(
        version=version, spec=spec, base_url=base_url, started_at=utc_now(), origin=origin, **extra
    )


def ensure_endpoint(config: CiaConfig) -> EndpointRecord:
    """A healthy live endpoint, started or restarted if needed (see the module docstring)."""
    record = current_endpoint(config)
    wanted = EndpointSpec.from_config(config)
    if record is not None and _healthy(record, config) and _keeps(record, wanted):
        return record
    with _locked(config):
        record = current_endpoint(config)  # another process may have fixed it meanwhile
        if record is not None and _healthy(record, config, cached=False):
            if _keeps(record, wanted):
                return record
            # An on-demand record whose settings changed in cia.yaml: replace it.
            new = _launch(config, wanted, version=record.version + 1, origin="on-demand",
                          previous_version=record.version)  # fmt: skip
            _make_live(config, new)
            if record.is_local and record.pid and record.pid != new.pid:
                stop_process(record.pid)
            return new
        if record is None:
            new = _launch(config, wanted, version=1, origin="on-demand")
        elif record.is_local:
            log.warning("model server of endpoint v%d is down; restarting it", record.version)
            if record.pid and process_alive(record.pid):
                stop_process(record.pid)  # alive but not listening: hung, never left behind
            new = _launch(config, record.spec, version=record.version + 1, origin="restart",
                          previous_version=record.version, note=f"restart of v{record.version}")  # fmt: skip
        else:
            raise EndpointError(f"the {record.engine} endpoint {record.base_url} does not answer")
        _make_live(config, new)
        return new


def _keeps(record: EndpointRecord, wanted: EndpointSpec) -> bool:
    return record.origin != "on-demand" or record.fingerprint == wanted.fingerprint


def deploy_endpoint(
    config: CiaConfig, *, rollback: bool = False, log_line: Callable[[str], None] = log.info
) -> tuple[EndpointRecord, EndpointRecord | None, float]:
    """Blue-green: start the new endpoint, test it, switch, drain and stop the old one.

    Returns (new, previous, test-completion latency in ms). On any failure before the switch
    the live record is untouched and a started server is stopped."""
    with _locked(config):
        previous = current_endpoint(config)
        version = (previous.version if previous else 0) + 1
        if rollback:
            target = _rollback_target(config, previous)
            spec, origin, note = target.spec, "rollback", f"rollback to v{target.version}"
        else:
            spec, origin, note = EndpointSpec.from_config(config), "deploy", None
        log_line(f"starting {spec.engine} endpoint for {spec.model}" + (f" ({note})" if note else ""))
        new = _launch(config, spec, version=version, origin=origin,
                      previous_version=previous.version if previous else None, note=note)  # fmt: skip
        try:
            latency_ms = _smoke_completion(new, config)
        except EndpointError:
            if new.is_local and new.pid:
                stop_process(new.pid)
            raise
        _make_live(config, new)
        log_line(f"endpoint v{new.version} is live at {new.base_url}")
    old_pid = previous.pid if previous is not None and previous.is_local else None
    if previous is not None and old_pid and old_pid != new.pid and process_alive(old_pid):
        log_line(f"draining v{previous.version} for {config.llm.drain_s:.0f} s, then stopping pid {old_pid}")
        time.sleep(config.llm.drain_s)
        stop_process(old_pid)
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


def stop_local_endpoint(config: CiaConfig) -> None:
    """Stop the live local server (the record stays: the next question restarts it)."""
    record = current_endpoint(config)
    if record is not None and record.is_local and record.pid and process_alive(record.pid):
        stop_process(record.pid)
        _HEALTHY.pop(record.base_url, None)


def chat_client(record: EndpointRecord, config: CiaConfig) -> Any:
    """The `openai` client for the endpoint: every LLM call goes through it."""
    import openai

    return openai.OpenAI(
        base_url=record.base_url,
        api_key=(config.llm.api_key if not record.is_local else None) or "unused",
        timeout=config.llm.request_timeout_s,
        max_retries=1,
    )
