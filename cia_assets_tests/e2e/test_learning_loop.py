"""The whole learning loop on the embedded default with real components: a git repo indexed
for real, real answers and feedback in the trace store, the feedback sensor, the
`learning_loop` job of the real definitions (analytics with dbt on DuckDB, training set, a CPU
LoRA adapter registered in a local MLflow, evaluation, the blocking promotion check, serving as
a canary), then promotion, and a question answered by the new adapter. That run is the default
pair at test size: the packaged Qwen2.5-Coder-0.5B teaches, learns and serves (the 1.5B teacher
is measured in bench_learning). The two gate tests train the tiny SmolLM2 from a deterministic
teacher: it learns what it is shown in 16 CPU steps, which is what they are about."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest

from cia_assets.config import CiaConfig
from cia_assets_tests.support.fakes import fake_openai, ragas_judge_reply
from cia_assets_tests.support.materialize import materialize_repo
from cia_assets_tests.support.net import free_port
from cia_assets_tests.support.repos import SAMPLE_FILES, GitRepo

STUDENT = "Qwen2.5-Coder-0.5B-Instruct"  # the packaged default: served model and student

BILLING_RULES: dict[str, str | bytes | None] = {
    f"billing/rule_{index}.py": (
        f"def apply_rule_{index}(invoice):\n"
        f'    """Billing rule {index}: adds a fee of {index} cents to the invoice."""\n'
        f"    invoice.total += {index}\n"
        "    return invoice\n"
    )
    for index in range(6)
}


@pytest.fixture
def judge_url() -> Iterator[str]:
    """A stand-in for the judge endpoint (an LLM judge cannot run here; the packaged 135M model
    cannot follow ragas' schemas)."""
    with fake_openai(ragas_judge_reply, model="judge") as judge:
        yield judge.base_url


@pytest.fixture
def loop_config(
    write_config: Callable[..., CiaConfig],
    make_repo: Callable[..., GitRepo],
    monkeypatch: pytest.MonkeyPatch,
) -> CiaConfig:
    repo = make_repo("payments", {**SAMPLE_FILES, **BILLING_RULES})
    config = write_config(
        [{"url": repo.url, "id": "payments", "web_url": "https://git.example.com/acme/payments"}],
        llm={"model": STUDENT, "port": 8650, "drain_s": 0, "context_tokens": 2048, "max_answer_tokens": 128},
        # The served 0.5B teaches itself here (test size: the 1.5B would double the teacher's
        # minutes); the packaged 1.5B teacher is measured in bench_learning.
        datasets={"synthetic_pairs": 16, "min_chunk_lines": 1, "eval_share": 0.3, "teacher": {"model": None}},
        training={"max_steps": 4, "batch_size": 2, "max_seq_tokens": 1024, "learning_rate": 0.0005},
        # No judge: the stand-in judges by word overlap, which rewards formula answers like the
        # gate tests' teacher writes and is noise on the 0.5B's own prose (2 questions: 0.50 vs
        # 0.17 against the answers that cite inline and quote the code). The gate tests show it gating.
        evaluation={"max_questions": 4, "ragas": False},
        promotion={"canary_share": 0.5},
        feedback={"min_new_feedback": 2},
    )
    # The real definitions bind their resources to $CIA_CONFIG, as a deployment does.
    monkeypatch.setenv("CIA_CONFIG", str(config.config_path))
    return config


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, object]:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    assert events, f"{asset} was not materialized"
    materialization = events[-1].event_specific_data.materialization  # type: ignore[union-attr]
    return {k: v.value for k, v in materialization.metadata.items()}


def test_feedback_to_promoted_adapter(loop_config: CiaConfig, tmp_path: Path) -> None:
    from cia_assets.definitions import defs as load_defs
    from cia_assets.defs.datasets.assets import synthetic_qa_dataset
    from cia_assets.defs.resources import build_resources
    from cia_assets.defs.training.automation import feedback_sensor
    from cia_assets.lib.answering.answer import AskRequest
    from cia_assets.lib.answering.service import AssistantService
    from cia_assets.lib.core.access import Grant
    from cia_assets.lib.learning.registry import AdapterRegistry
    from cia_assets.lib.serving.endpoint import choose_endpoint, current_endpoint, stop_local_endpoint

    config = loop_config
    instance = dg.DagsterInstance.ephemeral()
    resources = build_resources(str(config.config_path))
    try:
        materialize_repo(config, instance, "payments")
        synthetic = dg.materialize([synthetic_qa_dataset], instance=instance, resources=resources)
        pairs = _metadata(synthetic, "synthetic_qa_dataset")
        assert pairs["pairs"] and pairs["teacher"] == f"{STUDENT}@{current_endpoint(config).base_url}"  # type: ignore[union-attr]

        # Users ask and vote, through the same service the chat app runs.
        service = AssistantService(config)
        try:
            grant = Grant(name="local", repos=("payments",))
            # The user likes the first answer that cites code.
            for question in (
                "How does TokenValidator validate a token?",
                "What does check_permission return for an admin?",
                "How is a payment permission checked?",
                "What does TokenValidator.validate compare?",
            ):
                liked = service.answerer.ask(AskRequest(question=question, grant=grant))
                if liked.citations:
                    break
            disliked = service.answerer.ask(AskRequest(question="How are refunds computed?", grant=grant))
            service.store.add_feedback(liked.trace_id, "up", voter="alice")
            service.store.add_feedback(disliked.trace_id, "down", voter="bob")
        finally:
            service.close()
        assert liked.citations, "the liked answer must cite code to become a golden example"

        # Two votes from two voters reach the threshold: the sensor requests the learning loop.
        sensor_resources = {"cia": resources["cia"]}
        tick = feedback_sensor(dg.build_sensor_context(instance=instance, resources=sensor_resources))
        assert isinstance(tick, dg.SensorResult) and tick.run_requests and len(tick.run_requests) == 1
        assert tick.cursor and '"local_seq": 2' in tick.cursor
        again = feedback_sensor(
            dg.build_sensor_context(instance=instance, resources=sensor_resources, cursor=tick.cursor)
        )
        assert isinstance(again, dg.SensorResult) and not again.run_requests  # no new votes since

        definitions = load_defs()
        job = definitions.resolve_job_def("learning_loop")
        run = job.execute_in_process(instance=instance, tags=dict(tick.run_requests[0].tags))
        assert run.success

        training = _metadata(run, "training_dataset")
        assert training["golden_examples"] == 1 and training["files_in_both_splits"] == 0
        adapter = _metadata(run, "lora_adapter")
        assert adapter["model_version"] == "1" and adapter["alias"] == "challenger"
        assert adapter["backend"] == "cpu" and len(adapter["loss_curve"]) == 4  # type: ignore[arg-type]
        assert Path(str(adapter["gguf_path"])).is_file()
        # It learned the teacher's answers: on the held-out examples its loss is far below the
        # base model's (measured: 0.94 -> 0.16), not a no-op adapter passing the gate.
        assert float(adapter["eval_loss_adapter"]) < float(adapter["eval_loss_base"]) / 2, adapter  # type: ignore[arg-type]
        evaluation = _metadata(run, "rag_eval_results")
        assert evaluation["verdict"] == "passed", evaluation["verdict_reasons"]
        assert "base/citation_validity" in evaluation and "challenger/citation_validity" in evaluation
        # Judged on what the answers say, not only on their markers.
        for metric in ("cites_source_file", "grounded_rate"):
            assert any(r.startswith(f"{metric}:") for r in evaluation["verdict_reasons"]), metric  # type: ignore[union-attr]
        assert "retrieval/file_recall@5" in evaluation
        checks = {c.check_name: c.passed for c in run.get_asset_check_evaluations()}
        assert checks["challenger_no_worse_than_champion"] is True
        served = _metadata(run, "served_endpoint")
        assert served["rollout"] == "canary" and served["canary_adapter_version"] == "1"
        assert served["adapter"] == "none"  # the base model keeps the other half

        registry = AdapterRegistry(config)
        version = registry.get("1")
        assert version.run_id and version.tags["evaluation"] == "passed"
        mlflow_run = registry.client.get_run(version.run_id)
        assert mlflow_run.data.params["max_steps"] == "4"
        assert len(registry.client.get_metric_history(version.run_id, "train_loss")) == 4
        assert "eval_citation_validity" in mlflow_run.data.metrics

        live = current_endpoint(config)
        assert live is not None and live.canary is not None and live.canary_share == 0.5
        assert choose_endpoint(config, draw=lambda: 0.1).adapter_version == "1"
        assert choose_endpoint(config, draw=lambda: 0.9).adapter is None

        # The next materialization promotes the canary: the champion alias moves, the adapter serves alone.
        from cia_assets.defs.serving.assets import served_endpoint

        promoted = dg.materialize([served_endpoint], instance=instance, resources=resources)
        served = _metadata(promoted, "served_endpoint")
        assert served["rollout"] == "promoted" and served["adapter_version"] == "1"
        assert registry.by_alias("champion").version == "1"  # type: ignore[union-attr]
        assert registry.by_alias("challenger") is None
        live = current_endpoint(config)
        assert live is not None and live.canary is None and live.adapter == version.gguf_path

        service = AssistantService(config)
        try:
            answer = service.answerer.ask(AskRequest(question="What does apply_rule_3 do?", grant=grant))
        finally:
            service.close()
        assert answer.model == f"{STUDENT}+{version.gguf_path}"
    finally:
        stop_local_endpoint(config)


_MARKER = re.compile(r"\[(\d+)\]")
_BACKTICKED = re.compile(r"`[^`\n]+`")


def _corrupt(example: dict[str, object], rng: random.Random) -> dict[str, object]:
    """The example with its answer made wrong the two ways a bad teacher is: each citation
    moved to another source of the prompt, and every named identifier replaced by one no
    source holds."""
    messages = [dict(m) for m in example["messages"]]  # type: ignore[attr-defined]
    sources = sorted(
        {int(n) for n in re.findall(r"^\[(\d+)\] \S+ lines", str(messages[-2]["content"]), re.M)}
    )
    answer = str(messages[-1]["content"])
    answer = _MARKER.sub(lambda m: f"[{next(n for n in sources if n != int(m.group(1)))}]", answer)
    invented = f"`purge_{rng.choice(['ledger', 'accounts', 'tokens'])}_now`"
    answer = (
        _BACKTICKED.sub(lambda _: invented, answer) if "`" in answer else f"{answer} It calls {invented}."
    )
    messages[-1]["content"] = answer
    return {**example, "messages": messages}


def _taught(
    write_config: Callable[..., CiaConfig],
    repo: GitRepo,
    judge_url: str,
    *,
    question_sets: list[str] | None = None,
    **overrides: object,
) -> tuple[CiaConfig, dg.DagsterInstance]:
    """`repo` indexed and its training set written by the deterministic teacher (its answers
    cite their source and name its symbol), on the settings the two gate tests share."""
    from cia_assets.defs.datasets.assets import synthetic_qa_dataset, training_dataset
    from cia_assets.defs.resources import build_resources
    from cia_assets_tests.support.fakes import teacher_reply

    evaluation: dict[str, object] = {"max_questions": 4, "judge": {"base_url": judge_url, "model": "judge"}}
    if question_sets:
        evaluation["question_sets"] = question_sets
    with fake_openai(teacher_reply, model="teacher") as teacher:
        config = write_config(
            [{"url": repo.url, "id": "payments"}],
            llm={"port": free_port(), "drain_s": 0, "context_tokens": 2048, "max_answer_tokens": 48},
            # Short sources keep each training example a few hundred tokens (CPU seconds). The
            # teacher's answers only, no NOT FOUND examples: at this rate the tiny student
            # over-learns 3 of them (cite-hit 1.0 -> 0.5, measured), and these tests are about
            # the gate telling good answers from corrupted ones; the 0.5B loop test keeps them.
            datasets={"synthetic_pairs": 16, "min_chunk_lines": 1, "max_chunk_lines": 10, "eval_share": 0.3,
                      "abstention_share": 0.0, "teacher": {"base_url": teacher.base_url, "model": "teacher"}},
            # Enough steps at a high rate for the tiny model to learn what it is shown.
            training={"max_steps": 16, "batch_size": 2, "max_seq_tokens": 768, "learning_rate": 0.003},
            evaluation=evaluation,
            **overrides,
        )  # fmt: skip
        instance = dg.DagsterInstance.ephemeral()
        materialize_repo(config, instance, "payments")
        resources = build_resources(str(config.config_path))
        assert dg.materialize(
            [synthetic_qa_dataset, training_dataset], instance=instance, resources=resources
        ).success
    return config, instance


def test_an_adapter_trained_on_corrupted_answers_is_refused_and_the_base_keeps_serving(
    write_config: Callable[..., CiaConfig], make_repo: Callable[..., GitRepo], judge_url: str, tmp_path: Path
) -> None:
    """The gate fails when it should: a challenger trained on answers whose citations are
    shuffled and whose identifiers are invented learns to write them, scores below the base
    model on what answers say (cite-hit, identifier recall, grounded rate), is refused by the
    blocking check, and serves nothing: the base model keeps every question. Both also answer
    a fixed question set (one real, one absent-feature question), scored beside the split."""
    from cia_assets.defs.evaluation.assets import rag_eval_results
    from cia_assets.defs.evaluation.checks import challenger_no_worse_than_champion
    from cia_assets.defs.resources import build_resources
    from cia_assets.defs.serving.assets import served_endpoint
    from cia_assets.defs.training.assets import lora_adapter
    from cia_assets.lib.core import artifacts
    from cia_assets.lib.core.layout import EVAL_FILE, TRAIN_FILE
    from cia_assets.lib.learning.registry import CHALLENGER, CHAMPION, AdapterRegistry
    from cia_assets.lib.serving.endpoint import current_endpoint, ensure_endpoint, stop_local_endpoint

    repo = make_repo("payments", {**SAMPLE_FILES, **BILLING_RULES})
    fixed_set = [
        {"id": "rule-3", "repo": "acme/payments", "question": "What does apply_rule_3 do to an invoice?",
         "reference_answer": "`apply_rule_3` adds 3 to `invoice.total`.",
         "reference_files": ["billing/rule_3.py"]},
        {"id": "no-graphql", "repo": "acme/payments", "absent": True,
         "question": "How does the GraphQL gateway stitch the payments schema?"},
    ]  # fmt: skip
    (tmp_path / "fixed.jsonl").write_text("".join(json.dumps(row) + "\n" for row in fixed_set))
    config, instance = _taught(write_config, repo, judge_url, question_sets=["fixed.jsonl"])
    layout = config.layout
    honest = artifacts.require_current(layout.training_datasets, "training_dataset")
    rng = random.Random(5)
    version, folder = artifacts.new_version(layout.training_datasets)
    train = [_corrupt(e, rng) for e in artifacts.read_jsonl(honest.path / TRAIN_FILE)]
    artifacts.write_jsonl(folder / TRAIN_FILE, train)
    (folder / EVAL_FILE).write_bytes((honest.path / EVAL_FILE).read_bytes())  # the same eval questions
    artifacts.publish(layout.training_datasets, version, {**honest.summary, "corrupted": True})
    assert all("purge_" in str(e["messages"][-1]["content"]) for e in train)  # type: ignore[index]

    try:
        before = ensure_endpoint(config)
        result = dg.materialize(
            [lora_adapter, rag_eval_results, challenger_no_worse_than_champion, served_endpoint],
            instance=instance,
            resources=build_resources(str(config.config_path)),
            raise_on_error=False,
        )
        trained = result.asset_materializations_for_node("lora_adapter")[0].metadata
        losses = [point["loss"] for point in trained["loss_curve"].value]  # type: ignore[union-attr]
        assert losses[-1] < losses[0] / 2, losses  # it learned the corrupted answers
        evaluation = {
            k: v.value
            for k, v in result.asset_materializations_for_node("rag_eval_results")[0].metadata.items()
        }
        [check] = result.get_asset_check_evaluations()
        assert not check.passed, check.description
        assert evaluation["verdict"] == "failed"
        # The fixed set was asked of both, scored, and gated (abstention included).
        assert evaluation["question_set"] == 2
        assert {"base/set_cite_hit", "base/set_abstention", "challenger/set_abstention"} <= set(evaluation)
        assert any(r.startswith("set_abstention:") for r in evaluation["verdict_reasons"])  # type: ignore[union-attr]
        report = json.loads(Path(str(evaluation["report"])).read_text())
        assert [row["case_id"] for row in report["question_set"]["base"]] == ["rule-3", "no-graphql"]
        below = {r.split(":")[0] for r in evaluation["verdict_reasons"] if "below" in r}  # type: ignore[union-attr]
        # Refused on what the answers say, which citation validity alone could not see.
        assert below & {"cites_source_file", "ref_identifier_recall", "grounded_rate"}, evaluation[
            "verdict_reasons"
        ]
        # Refused: nothing was served after it, and the base model answers every question.
        assert not result.asset_materializations_for_node("served_endpoint")
        live = current_endpoint(config)
        assert live == before and live is not None and live.adapter is None and live.canary is None
        registry = AdapterRegistry(config)
        assert registry.by_alias(CHAMPION) is None
        challenger = registry.by_alias(CHALLENGER)
        assert challenger is not None and registry.get(challenger.version).tags["evaluation"] == "failed"
    finally:
        stop_local_endpoint(config)


def test_an_adapter_trained_on_good_answers_passes_the_gate_and_is_promoted_through_the_canary(
    write_config: Callable[..., CiaConfig], make_repo: Callable[..., GitRepo], judge_url: str
) -> None:
    """The gate passes what it should: the same training as the corrupted adapter's above, on
    the teacher's honest answers (each citing its source and naming its symbol). The
    challenger stays within every margin of the base model, passes the blocking check, serves
    its canary share, and the next `served_endpoint` run promotes it: the champion alias
    moves and it answers every question. (The served endpoint's smoke question is left out:
    the tiny student sometimes invents a name there, which that check rightly refuses; it is
    shown failing and passing in e2e/test_endpoint.py.)"""
    from cia_assets.defs.evaluation.assets import rag_eval_results
    from cia_assets.defs.evaluation.checks import challenger_no_worse_than_champion
    from cia_assets.defs.resources import build_resources
    from cia_assets.defs.serving.assets import served_endpoint
    from cia_assets.defs.training.assets import lora_adapter
    from cia_assets.lib.learning.registry import CHALLENGER, CHAMPION, AdapterRegistry
    from cia_assets.lib.serving.endpoint import choose_endpoint, current_endpoint, stop_local_endpoint

    repo = make_repo("payments", {**SAMPLE_FILES, **BILLING_RULES})
    config, instance = _taught(write_config, repo, judge_url, promotion={"canary_share": 0.5})
    try:
        result = dg.materialize(
            [lora_adapter, rag_eval_results, challenger_no_worse_than_champion, served_endpoint],
            instance=instance,
            resources=build_resources(str(config.config_path)),
            raise_on_error=False,
        )  # fmt: skip
        evaluation = {
            k: v.value
            for k, v in result.asset_materializations_for_node("rag_eval_results")[0].metadata.items()
        }
        assert evaluation["verdict"] == "passed", evaluation["verdict_reasons"]
        checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
        assert checks["challenger_no_worse_than_champion"].passed
        # What it was judged on: what the answers say, not only their markers.
        for metric in ("cites_source_file", "ref_identifier_recall", "grounded_rate", "faithfulness"):
            assert any(r.startswith(f"{metric}:") for r in evaluation["verdict_reasons"]), metric  # type: ignore[union-attr]
        served = {
            k: v.value
            for k, v in result.asset_materializations_for_node("served_endpoint")[0].metadata.items()
        }
        registry = AdapterRegistry(config)
        challenger = registry.by_alias(CHALLENGER)
        assert challenger is not None and served["rollout"] == "canary"
        assert served["canary_adapter_version"] == challenger.version
        assert choose_endpoint(config, draw=lambda: 0.1).adapter_version == challenger.version
        assert choose_endpoint(config, draw=lambda: 0.9).adapter is None

        promoted = dg.materialize(
            [served_endpoint], instance=instance, resources=build_resources(str(config.config_path))
        )
        assert promoted.asset_materializations_for_node("served_endpoint")[0].metadata["rollout"].value == (
            "promoted"
        )
        champion = registry.by_alias(CHAMPION)
        assert champion is not None and champion.version == challenger.version
        assert registry.by_alias(CHALLENGER) is None
        live = current_endpoint(config)
        assert (
            live is not None
            and live.canary is None
            and live.adapter == registry.get(champion.version).gguf_path
        )
    finally:
        stop_local_endpoint(config)
