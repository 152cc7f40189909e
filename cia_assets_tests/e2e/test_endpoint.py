"""The served endpoint with the real llama.cpp server and the packaged SmolLM2: start on
demand, reuse across processes, blue-green deploy with no failed request, rollback, restart
of a dead server, remote endpoints, and the `served_endpoint` asset with its blocking check."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest

from cia_assets.config import CiaConfig
from cia_assets.lib.serving.endpoint import (
    EndpointError,
    chat_client,
    current_endpoint,
    deploy_endpoint,
    endpoint_history,
    ensure_endpoint,
    stop_local_endpoint,
)
from cia_assets.lib.serving.llm_server import process_alive
from cia_assets_tests.support.materialize import materialize_repo
from cia_assets_tests.support.net import free_port
from cia_assets_tests.support.repos import SAMPLE_FILES, GitRepo

DEFAULT_MODEL = "Qwen2.5-Coder-0.5B-Instruct"


@pytest.fixture
def llm_config(write_config: Callable[..., CiaConfig]) -> Iterator[Callable[..., CiaConfig]]:
    """Configs sharing one data dir; every server they started is stopped afterwards."""
    made: list[CiaConfig] = []
    port = free_port()

    def make(**llm: object) -> CiaConfig:
        config = write_config([], llm={"port": port, "drain_s": 2, **llm})
        made.append(config)
        return config

    yield make
    if made:
        for record in endpoint_history(made[-1]):
            if record.pid and process_alive(record.pid):
                os.killpg(record.pid, signal.SIGKILL)


def _ensure_in_subprocess(config: CiaConfig) -> subprocess.Popen[str]:
    code = (
        "import json, sys\n"
        "from cia_assets.config import load_config\n"
        "from cia_assets.lib.serving.endpoint import ensure_endpoint\n"
        "record = ensure_endpoint(load_config(sys.argv[1]))\n"
        "print(json.dumps({'pid': record.pid, 'version': record.version}))\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(config.config_path)], stdout=subprocess.PIPE, text=True
    )


def test_ensure_starts_once_and_every_process_reuses_it(llm_config: Callable[..., CiaConfig]) -> None:
    config = llm_config()
    # Two fresh processes at once (two shells running `cia ask`): one server between them.
    first, second = _ensure_in_subprocess(config), _ensure_in_subprocess(config)
    results = [json.loads(p.communicate(timeout=120)[0]) for p in (first, second)]
    assert results[0] == results[1] == {"pid": results[0]["pid"], "version": 1}
    assert len(endpoint_history(config)) == 1
    record = ensure_endpoint(config)
    assert (record.pid, record.version, record.origin) == (results[0]["pid"], 1, "on-demand")
    assert record.model == "SmolLM2-135M-Instruct" and record.engine == "llama_cpp"
    reply = chat_client(record, config).chat.completions.create(
        model=record.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert reply.choices[0].message.content is not None

    # A server that died is restarted with the same model, as a new version.
    assert record.pid is not None
    os.killpg(record.pid, signal.SIGKILL)
    time.sleep(0.2)
    restarted = ensure_endpoint(config)
    assert restarted.origin == "restart" and restarted.version == 2 and restarted.pid != record.pid
    assert restarted.fingerprint == record.fingerprint
    stop_local_endpoint(config)
    assert not process_alive(restarted.pid)


def test_deploy_switches_without_a_failed_request_and_rollback_restores(
    llm_config: Callable[..., CiaConfig],
) -> None:
    first_config = llm_config()
    first = ensure_endpoint(first_config)
    errors: list[BaseException] = []
    answered: list[str] = []
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            record = current_endpoint(first_config)
            assert record is not None
            try:
                reply = chat_client(record, first_config).chat.completions.create(
                    model=record.model,
                    messages=[{"role": "user", "content": "Count to three."}],
                    max_tokens=8,
                )
                answered.append(record.base_url)
                assert reply.choices
            except BaseException as error:
                errors.append(error)

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        # A new model setting (a smaller context) is a different endpoint: blue-green to it.
        second_config = llm_config(context_tokens=1024)
        new, previous, latency_ms = deploy_endpoint(second_config)
        time.sleep(1.0)  # a few requests on the new server
    finally:
        stop.set()
        asker.join(timeout=60)
    assert errors == []
    assert previous is not None and previous.pid == first.pid
    assert (new.version, new.origin, new.previous_version) == (2, "deploy", 1)
    assert new.spec.context_tokens == 1024 and latency_ms > 0
    assert {first.base_url, new.base_url} <= set(answered)  # both served during the switch
    assert not process_alive(first.pid)  # drained, then stopped
    assert current_endpoint(second_config) == new

    back, replaced, _ = deploy_endpoint(second_config, rollback=True)
    assert (back.version, back.origin, back.note) == (3, "rollback", "rollback to v1")
    assert back.fingerprint == first.fingerprint and back.pid not in (first.pid, new.pid)
    assert replaced == new and not process_alive(new.pid)
    stop_local_endpoint(second_config)
    assert not process_alive(back.pid)


def test_rollback_needs_an_earlier_different_endpoint(llm_config: Callable[..., CiaConfig]) -> None:
    config = llm_config()
    with pytest.raises(EndpointError, match="no endpoint has been live yet"):
        deploy_endpoint(config, rollback=True)
    live = ensure_endpoint(config)
    with pytest.raises(EndpointError, match="nothing to roll back to"):
        deploy_endpoint(config, rollback=True)
    assert current_endpoint(config) == live
    stop_local_endpoint(config)


def test_an_unreachable_remote_endpoint_fails_clearly_and_keeps_the_live_one(
    llm_config: Callable[..., CiaConfig],
) -> None:
    local = llm_config()
    live = ensure_endpoint(local)
    dead_url = f"http://127.0.0.1:{free_port()}/v1"
    remote = llm_config(engine="vllm", base_url=dead_url, model="Qwen/Qwen2.5-Coder-1.5B-Instruct")
    with pytest.raises(EndpointError, match=dead_url.replace("/v1", "")):
        deploy_endpoint(remote)
    assert current_endpoint(remote) == live
    stop_local_endpoint(local)


def test_served_endpoint_asset_and_its_blocking_check(
    write_config: Callable[..., CiaConfig], make_repo: Callable[..., GitRepo]
) -> None:
    from cia_assets.defs.resources import build_resources
    from cia_assets.defs.serving.assets import served_endpoint
    from cia_assets.defs.serving.checks import answers_smoke_question_with_citation

    repo = make_repo("payments", SAMPLE_FILES)
    config = write_config(
        [{"url": repo.url, "id": "payments", "web_url": "https://git.example.com/acme/payments"}],
        # The check asks the served model a real question: the packaged default, not the tiny one.
        llm={"model": DEFAULT_MODEL, "port": free_port(), "drain_s": 1},
    )
    instance = dg.DagsterInstance.ephemeral()
    materialize_repo(config, instance, "payments")
    try:
        result = dg.materialize(
            [served_endpoint, answers_smoke_question_with_citation],
            instance=instance,
            resources=build_resources(str(config.config_path)),
        )
        assert result.success
        materialization = result.asset_materializations_for_node("served_endpoint")[0]
        metadata = {k: v.value for k, v in materialization.metadata.items()}
        assert metadata["engine"] == "llama_cpp" and metadata["version"] == 1
        assert metadata["model"] == DEFAULT_MODEL and metadata["adapter"] == "none"
        assert str(metadata["base_url"]).startswith("http://127.0.0.1:")
        checks = result.get_asset_check_evaluations()
        assert [c.check_name for c in checks] == ["answers_smoke_question_with_citation"]
        check = checks[0]
        assert check.passed, check.metadata
        assert check.metadata["citations"].value  # type: ignore[union-attr]
        assert str(check.metadata["expected_chunk"].value).startswith("payments:")

        # Rollback with no earlier endpoint fails the run and leaves the live one as it was.
        rollback = dg.materialize(
            [served_endpoint],
            instance=instance,
            resources=build_resources(str(config.config_path)),
            run_config={"ops": {"served_endpoint": {"config": {"rollback": True}}}},
            raise_on_error=False,
        )
        assert not rollback.success
        live = current_endpoint(config)
        assert live is not None and live.version == 1
    finally:
        stop_local_endpoint(config)


def _cites_the_wrong_block(request: dict[str, object]) -> str:
    """A model that answers "What does X do?" from another block of its sources: what it says
    is in the block it cites, so the citation is valid and the names grounded; it is not X."""
    messages = request["messages"]
    assert isinstance(messages, list)
    prompt = str(messages[-1]["content"])
    asked_names = re.findall(r"What does (\w+) do\?", prompt)
    if not asked_names:  # the deployment's test completion
        return "ready"
    asked = asked_names[-1]
    headers = re.findall(r"^\[(\d+)\] \S+ lines \d+-\d+ \(([^)]+)\)$", prompt, re.M)
    others = [(n, symbol.rsplit(".", 1)[-1]) for n, symbol in headers if asked not in symbol]
    assert others, prompt
    number, symbol = others[0]
    return f"`{symbol}` is defined in this file [{number}]."


def test_the_smoke_check_fails_a_wrong_answer_whose_citations_are_valid(
    write_config: Callable[..., CiaConfig], make_repo: Callable[..., GitRepo]
) -> None:
    from cia_assets.defs.resources import build_resources
    from cia_assets.defs.serving.assets import served_endpoint
    from cia_assets.defs.serving.checks import answers_smoke_question_with_citation
    from cia_assets_tests.support.fakes import fake_openai

    repo = make_repo("payments", SAMPLE_FILES)
    with fake_openai(_cites_the_wrong_block, model="remote-coder") as remote:
        config = write_config(
            [{"url": repo.url, "id": "payments"}],
            llm={"engine": "openai", "base_url": remote.base_url, "model": "remote-coder"},
        )
        instance = dg.DagsterInstance.ephemeral()
        materialize_repo(config, instance, "payments")
        result = dg.materialize(
            [served_endpoint, answers_smoke_question_with_citation],
            instance=instance,
            resources=build_resources(str(config.config_path)),
            raise_on_error=False,
        )
    [check] = result.get_asset_check_evaluations()
    # The answer kept valid citations (what the check used to pass on), to the wrong code.
    assert check.metadata["citations"].value, check.metadata  # type: ignore[union-attr]
    assert not check.passed
    assert "not payments:" in str(check.description) and "the only chunk defining it" in str(
        check.description
    )


def test_any_openai_compatible_endpoint_serves_by_configuration(
    llm_config: Callable[..., CiaConfig], write_config: Callable[..., CiaConfig], tmp_path: Path
) -> None:
    # A llama.cpp server started elsewhere plays "a hosted OpenAI-compatible API" here.
    elsewhere = llm_config()
    upstream = ensure_endpoint(elsewhere)
    remote = write_config(
        [], llm={"engine": "openai", "base_url": upstream.base_url, "model": upstream.model}
    )
    remote = remote.model_copy(update={"data_dir": tmp_path / "remote-data"})
    try:
        new, previous, latency_ms = deploy_endpoint(remote)
        assert (new.engine, new.pid, previous) == ("openai", None, None)
        assert new.base_url == upstream.base_url and latency_ms > 0
        assert ensure_endpoint(remote) == new
        reply = chat_client(new, remote).chat.completions.create(
            model=new.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
        assert reply.choices
    finally:
        stop_local_endpoint(elsewhere)


def test_a_server_too_busy_to_answer_is_not_mistaken_for_a_dead_one(
    llm_config: Callable[..., CiaConfig],
) -> None:
    from cia_assets.lib.serving.endpoint import HealthCache

    config = llm_config()
    record = ensure_endpoint(config)
    assert record.pid is not None
    # A server in the middle of a long prefill on two busy cores answers no HTTP probe for
    # seconds; a stopped process is the same from outside: alive, listening, silent.
    os.kill(record.pid, signal.SIGSTOP)
    try:
        # A cache with no memo of it (as after its entry expired): the server is probed now.
        assert ensure_endpoint(config, health=HealthCache()) == record
        assert len(endpoint_history(config)) == 1
    finally:
        os.kill(record.pid, signal.SIGCONT)
        stop_local_endpoint(config)


def test_two_answers_streamed_at_once_both_run_to_their_end(llm_config: Callable[..., CiaConfig]) -> None:
    """Two people asking at once: llama-cpp-python's server, by default, cut the first stream
    ([DONE] with no finish_reason) as soon as the second request waited for the model, and
    both answers read "Not found". Queued, each runs to its end."""
    config = llm_config()
    record = ensure_endpoint(config, idle_stop_s=0)
    client = chat_client(record, config)
    finished: dict[int, tuple[str | None, str]] = {}

    def stream(n: int) -> None:
        reasons: list[str | None] = []
        pieces: list[str] = []
        with client.chat.completions.create(
            model=record.model,
            messages=[{"role": "user", "content": f"Count from {n} to {n + 20}, one number a line."}],
            max_tokens=24,
            temperature=0.0,
            stream=True,
        ) as chunks:
            for chunk in chunks:
                if chunk.choices:
                    reasons.append(chunk.choices[0].finish_reason)
                    pieces.append(chunk.choices[0].delta.content or "")
        finished[n] = (next((r for r in reasons if r), None), "".join(pieces))

    try:
        threads = [threading.Thread(target=stream, args=(n,)) for n in (1, 50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        stop_local_endpoint(config)
    assert sorted(finished) == [1, 50]
    for n, (reason, text) in finished.items():
        assert reason in ("stop", "length") and text.strip(), (n, reason, text)


def test_an_on_demand_server_stops_itself_when_idle_and_the_next_question_restarts_it(
    llm_config: Callable[..., CiaConfig],
) -> None:
    """`cia ask` starts a server and exits; nothing is left running once nobody asks."""
    config = llm_config(idle_stop_s=4)
    record = ensure_endpoint(config)
    assert record.pid is not None and process_alive(record.pid)
    # Requests keep it alive past its idle limit...
    for _ in range(4):
        chat_client(record, config).chat.completions.create(
            model=record.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=1
        )
        time.sleep(2)
    assert process_alive(record.pid)
    # ...and a quiet spell ends it.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process_alive(record.pid):
        time.sleep(0.5)
    assert not process_alive(record.pid)
    log_text = Path(record.log_path or "").read_text()
    assert "no request for 4 s: stopping" in log_text
    # Started for a question, it read no warm-up prompt first: only the four questions.
    assert log_text.count('"POST /v1/chat/completions HTTP/1.1" 200') == 4
    again = ensure_endpoint(config)
    assert again.pid != record.pid and process_alive(again.pid)
    assert again.fingerprint == record.fingerprint
    stop_local_endpoint(config)


def test_a_server_its_owner_starts_never_stops_on_its_own(llm_config: Callable[..., CiaConfig]) -> None:
    """`cia serve` passes idle_stop_s=0: it stops its server itself."""
    config = llm_config(idle_stop_s=2)
    record = ensure_endpoint(config, idle_stop_s=0)
    time.sleep(6)
    assert record.pid is not None and process_alive(record.pid)
    stop_local_endpoint(config)


def test_on_demand_endpoints_show_on_the_served_endpoint_asset(
    llm_config: Callable[..., CiaConfig],
) -> None:
    from cia_assets.defs.resources import CiaConfigResource
    from cia_assets.defs.serving.sensors import served_endpoint_sync

    config = llm_config()
    instance = dg.DagsterInstance.ephemeral()
    context = dg.build_sensor_context(
        instance=instance, resources={"cia": CiaConfigResource(config_path=str(config.config_path))}
    )
    empty = served_endpoint_sync(context)
    assert isinstance(empty, dg.SensorResult) and empty.asset_events == [] and empty.cursor == "0"

    record = ensure_endpoint(config)
    first = served_endpoint_sync(
        dg.build_sensor_context(
            instance=instance,
            cursor=empty.cursor,
            resources={"cia": CiaConfigResource(config_path=str(config.config_path))},
        )
    )
    assert isinstance(first, dg.SensorResult)
    assert [event.asset_key.to_user_string() for event in first.asset_events] == ["served_endpoint"]
    metadata = {key: value.value for key, value in first.asset_events[0].metadata.items()}  # type: ignore[union-attr]
    assert metadata["origin"] == "on-demand" and metadata["version"] == record.version
    assert metadata["pid"] == record.pid and metadata["model"] == record.model
    assert first.cursor == str(record.version)

    again = served_endpoint_sync(
        dg.build_sensor_context(
            instance=instance,
            cursor=first.cursor,
            resources={"cia": CiaConfigResource(config_path=str(config.config_path))},
        )
    )
    assert isinstance(again, dg.SensorResult) and again.asset_events == []
    stop_local_endpoint(config)


def _rss_mb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) // 1024


def test_distinct_questions_do_not_grow_the_model_server(llm_config: Callable[..., CiaConfig]) -> None:
    """Each distinct prompt once left its logits (tokens x vocabulary x 4 bytes) behind in
    llama-cpp-python's prompt cache, uncounted against its size: ~0.8 GB a question for the
    0.5B, until the kernel killed the server; and with `logits_all` the server kept a row of
    logits for every prompt token (`idle_llama_server.last_token_logits_llama`). Its memory
    must not grow with the questions asked, nor with their length."""
    config = llm_config()
    record = ensure_endpoint(config, idle_stop_s=0)
    assert record.pid is not None
    client = chat_client(record, config)
    code = Path(__file__).read_text() * 2
    sizes = [_rss_mb(record.pid)]
    for n in range(4):
        # ~1,800 distinct tokens each (the tiny model's vocabulary: ~350 MB of logits a prompt).
        excerpt = code[n * 6000 : (n + 1) * 6000]
        client.chat.completions.create(
            model=record.model,
            messages=[{"role": "user", "content": f"{excerpt}\nSummarize part {n}."}],
            max_tokens=4,
        )
        sizes.append(_rss_mb(record.pid))
    stop_local_endpoint(config)
    assert sizes[-1] - sizes[0] < 100, sizes


def test_a_new_server_has_read_the_answering_prompt_s_fixed_part_before_the_first_question(
    llm_config: Callable[..., CiaConfig],
) -> None:
    """The server reuses the KV of the prefix a prompt shares with the one before it: after
    the warm-up, the first question reads only its sources and question, not the system
    message too."""
    from cia_assets.lib.answering.prompts import PACKAGED_PROMPT

    config = llm_config()
    record = ensure_endpoint(config, idle_stop_s=0)
    try:
        messages = PACKAGED_PROMPT.render(
            sources="[1] a.py lines 1-2\ndef f():\n    return 1", question="What is f?"
        )
        response = chat_client(record, config).chat.completions.create(
            model=record.model, messages=messages, max_tokens=1
        )
        assert response.usage is not None
        log_text = Path(record.log_path or "").read_text()
        read = [int(n) for n in re.findall(r"prompt eval time = .*?/\s*(\d+) tokens", log_text)]
        assert len(read) == 2, log_text[-2000:]  # the warm-up, then the question
        assert read[1] < response.usage.prompt_tokens / 3, (read, response.usage.prompt_tokens)
    finally:
        stop_local_endpoint(config)


def test_a_packaged_model_in_bf16_is_converted_once_and_served(llm_config: Callable[..., CiaConfig]) -> None:
    """`llm.precision: bf16` serves a copy of the packaged weights that llama.cpp's quantizer
    made once per machine; `packaged` serves the packaged file itself."""
    from llama_cpp import Llama

    from cia_assets.lib.serving.llm_server import model_file, served_model_file
    from cia_assets.lib.serving.packaged_models import PACKAGED_MODELS

    packaged = llm_config(model="Qwen2.5-Coder-0.5B-Instruct", precision="packaged")
    assert served_model_file(packaged) == model_file(packaged)
    config = llm_config(model="Qwen2.5-Coder-0.5B-Instruct", precision="bf16")
    copy = served_model_file(config)
    assert copy != model_file(config) and copy.name.endswith(".bf16.gguf")
    made = copy.stat().st_mtime_ns
    assert served_model_file(config) == copy and copy.stat().st_mtime_ns == made  # converted once
    # A copy made from another release of the packaged file is made again.
    made_from = copy.with_name(copy.name + ".source")
    made_from.write_text("0" * 64 + "\n")
    assert served_model_file(config) == copy and copy.stat().st_mtime_ns != made
    assert made_from.read_text().split() == [PACKAGED_MODELS["Qwen2.5-Coder-0.5B-Instruct"].sha256]
    assert (
        Llama(model_path=str(copy), vocab_only=True, verbose=False).metadata["general.file_type"] == "32"
    )  # BF16
    record = ensure_endpoint(config, idle_stop_s=0)
    try:
        assert record.spec.gguf == str(copy)
        reply = chat_client(record, config).chat.completions.create(
            model=record.model,
            messages=[{"role": "user", "content": "Complete with one word: the opposite of hot is"}],
            max_tokens=3,
            temperature=0,
        )
        assert "cold" in (reply.choices[0].message.content or "").lower()
    finally:
        stop_local_endpoint(config)


def test_a_packaged_teacher_runs_on_a_server_of_its_own_for_the_job(
    llm_config: Callable[..., CiaConfig],
) -> None:
    """The learning loop's default teacher and judge are a packaged model other than the served
    one: started for the job on its own local server, answering in the asked JSON schema,
    stopped after. (The default is the 1.5B; the 0.5B plays it here, beside the tiny served
    model, to keep the test short.)"""
    import httpx

    from cia_assets.config import ModelEndpointConfig
    from cia_assets.lib.serving.model_endpoints import model_endpoint

    config = llm_config()
    assert (
        ModelEndpointConfig().model is None and config.datasets.teacher.model == "Qwen2.5-Coder-1.5B-Instruct"
    )
    served = ensure_endpoint(config)
    try:
        teacher_settings = ModelEndpointConfig(model=DEFAULT_MODEL, max_tokens=200)
        with model_endpoint(config, teacher_settings, role="datasets.teacher") as teacher:
            assert teacher.engine == "llama_cpp" and teacher.model == DEFAULT_MODEL
            assert teacher.base_url != served.base_url
            schema = {
                "type": "object",
                "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
                "required": ["question", "answer"],
            }
            reply = json.loads(
                teacher.complete_json(
                    [
                        {
                            "role": "user",
                            "content": "In JSON, ask and answer one short question about Python lists.",
                        }
                    ],
                    schema,
                )
            )
            assert set(reply) == {"question", "answer"}
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{teacher.base_url}/models", timeout=2)
        assert current_endpoint(config) == served  # the served endpoint is untouched
        # The served model itself (or none named) is the live endpoint, not a second server.
        with model_endpoint(config, ModelEndpointConfig(model=None), role="datasets.teacher") as same:
            assert same.base_url == served.base_url
        with (
            pytest.raises(ValueError, match=r"datasets\.teacher\.model: 'gpt-9' is not a packaged model"),
            model_endpoint(config, ModelEndpointConfig(model="gpt-9"), role="datasets.teacher"),
        ):
            pass
    finally:
        stop_local_endpoint(config)
