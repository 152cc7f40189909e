"""What starts the learning loop: the feedback sensor (local trace store, or Langfuse's scores
API through the real SDK against a local stand-in) and the weekly synthetic refresh."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import dagster as dg
import pytest

from cia_assets.config import CiaConfig
from cia_assets.lib.core.layout import DataLayout
from cia_assets.lib.observability.traces import TraceStore
from cia_assets_tests.support.fake_langfuse import PUBLIC_KEY, SECRET_KEY, FakeLangfuse, start_fake_langfuse
from cia_assets_tests.support.fakes import fake_openai, teacher_reply
from cia_assets_tests.support.materialize import materialize_repo
from cia_assets_tests.support.repos import SAMPLE_FILES, GitRepo
from cia_assets_tests.support.traces import trace


@pytest.fixture
def langfuse() -> Iterator[FakeLangfuse]:
    server = start_fake_langfuse()
    yield server
    server.close()


def _tick(config: CiaConfig, cursor: str | None = None) -> dg.SensorResult:
    from cia_assets.defs.resources import CiaConfigResource
    from cia_assets.defs.training.automation import feedback_sensor

    context = dg.build_sensor_context(
        cursor=cursor,
        resources={"cia": CiaConfigResource(config_path=str(config.config_path))},
        instance=dg.DagsterInstance.ephemeral(),
    )
    result = feedback_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def test_feedback_sensor_counts_local_votes_from_its_cursor(write_config: Callable[..., CiaConfig]) -> None:
    config = write_config([], feedback={"min_new_feedback": 3})
    store = TraceStore(DataLayout(config.data_dir).traces)
    assert _tick(config).skip_reason is not None  # no store yet
    record = trace()
    store.add_trace(record)
    store.add_feedback(record.trace_id, "up")
    store.add_feedback(record.trace_id, "down")
    below = _tick(config)
    assert not below.run_requests and "2 new feedback" in str(below.skip_reason)
    assert below.cursor is None  # keeps counting from the same point
    store.add_feedback(record.trace_id, "up")
    started = _tick(config, below.cursor)
    assert started.run_requests and len(started.run_requests) == 1
    assert started.run_requests[0].tags["cia/new_feedback"] == "3"
    assert started.cursor == '{"local_seq": 3}'
    assert not _tick(config, started.cursor).run_requests
    store.add_feedback(record.trace_id, "down")
    assert "1 new feedback" in str(_tick(config, started.cursor).skip_reason)


def test_feedback_sensor_reads_langfuse_scores_when_configured(
    write_config: Callable[..., CiaConfig], langfuse: FakeLangfuse
) -> None:
    config = write_config(
        [],
        feedback={"min_new_feedback": 2},
        langfuse={"host": langfuse.url, "public_key": PUBLIC_KEY, "secret_key": SECRET_KEY},
    )
    # Votes forwarded from the chat app and an annotation made in Langfuse's UI both count;
    # scores of other names (an evaluator's) do not.
    langfuse.scores.append({"name": "user-feedback", "value": 1, "timestamp": "2026-11-20T10:00:00Z"})
    langfuse.annotations.append(
        {"name": "user-feedback", "value": -1, "timestamp": "2026-11-20T11:00:00Z", "source": "ANNOTATION"}
    )
    langfuse.annotations.append({"name": "faithfulness", "value": 0.2, "timestamp": "2026-11-20T12:00:00Z"})
    started = _tick(config)
    assert started.run_requests and started.run_requests[0].tags["cia/new_feedback"] == "2"
    assert started.cursor == '{"langfuse_since": "2026-11-20T11:00:00+00:00"}'
    assert any(r.startswith("GET /api/public/v3/scores") for r in langfuse.requests)

    quiet = _tick(config, started.cursor)
    assert not quiet.run_requests and "0 new feedback" in str(quiet.skip_reason)
    langfuse.down = True
    down = _tick(config, started.cursor)
    assert "Langfuse did not answer" in str(down.skip_reason) and down.cursor == started.cursor
    langfuse.down = False
    stamp = datetime(2026, 11, 21, tzinfo=UTC).isoformat().replace("+00:00", "Z")
    langfuse.annotations += [{"name": "user-feedback", "value": 1, "timestamp": stamp}] * 2
    assert _tick(config, started.cursor).run_requests


def test_weekly_refresh_asks_for_the_repos_whose_index_changed(
    write_config: Callable[..., CiaConfig], make_repo: Callable[..., GitRepo]
) -> None:
    from cia_assets.defs.datasets.assets import synthetic_qa_dataset
    from cia_assets.defs.resources import build_resources
    from cia_assets.defs.training.automation import weekly_synthetic_refresh

    payments = make_repo("payments", SAMPLE_FILES)
    ledger = make_repo("ledger", {"ledger/book.py": "def balance(book):\n    return sum(book.entries)\n"})
    with fake_openai(teacher_reply) as teacher:
        config = write_config(
            [{"url": payments.url, "id": "payments"}, {"url": ledger.url, "id": "ledger"}],
            datasets={"teacher": {"base_url": teacher.base_url, "model": "t"}, "min_chunk_lines": 1},
        )
        resources = build_resources(str(config.config_path))
        instance = dg.DagsterInstance.ephemeral()

        def evaluate() -> dg.RunRequest | dg.SkipReason:
            context = dg.build_schedule_context(
                instance=instance,
                resources={"cia": resources["cia"]},
                scheduled_execution_time=datetime(2026, 11, 23, 3, tzinfo=UTC),
            )
            return weekly_synthetic_refresh(context)  # type: ignore[return-value]

        assert isinstance(evaluate(), dg.SkipReason)  # nothing indexed yet
        materialize_repo(config, instance, "payments")
        materialize_repo(config, instance, "ledger")
        first = evaluate()
        assert isinstance(first, dg.RunRequest)
        assert first.run_config == {
            "ops": {"synthetic_qa_dataset": {"config": {"repos": ["payments", "ledger"]}}}
        }
        assert dg.materialize(
            [synthetic_qa_dataset], instance=instance, resources=resources, run_config=first.run_config
        ).success
        assert isinstance(evaluate(), dg.SkipReason)

        ledger.commit(
            {"ledger/book.py": "def balance(book):\n    return sum(e.amount for e in book.entries)\n"}
        )
        materialize_repo(config, instance, "ledger")
        second = evaluate()
        assert isinstance(second, dg.RunRequest) and second.tags["cia/changed_repos"] == "ledger"
        before = len(teacher.requests)
        result = dg.materialize(
            [synthetic_qa_dataset], instance=instance, resources=resources, run_config=second.run_config
        )
        metadata = {
            k: v.value
            for k, v in result.asset_materializations_for_node("synthetic_qa_dataset")[0].metadata.items()
        }
        assert metadata["kept_from_previous"] > 0 and metadata["repos_refreshed"] == ["ledger"]
        sent = teacher.requests[before:]
        assert sent and all("ledger/book.py" in str(r["messages"]) for r in sent)
        assert isinstance(evaluate(), dg.SkipReason)
