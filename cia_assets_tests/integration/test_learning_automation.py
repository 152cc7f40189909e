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


def test_feedback_sensor_counts_votes_per_voter_and_needs_several_voters(
    write_config: Callable[..., CiaConfig],
) -> None:
    config = write_config([], feedback={"min_new_feedback": 3, "min_voters": 2})
    store = TraceStore(DataLayout(config.data_dir).traces)
    assert _tick(config).skip_reason is not None  # no store yet
    first, second, third = trace("one?"), trace("two?"), trace("three?")
    for record in (first, second, third):
        store.add_trace(record)
    for _ in range(4):  # one token voting four times on one answer is one vote
        store.add_feedback(first.trace_id, "up", voter="alice")
    store.add_feedback(second.trace_id, "down", voter="alice")
    below = _tick(config)
    assert not below.run_requests and "2 new vote(s) from 1 voter(s)" in str(below.skip_reason)
    assert below.cursor is None  # keeps counting from the same point
    store.add_feedback(third.trace_id, "up", voter="alice")
    alone = _tick(config, below.cursor)  # enough votes, but one token alone cannot start a round
    assert not alone.run_requests and "3 new vote(s) from 1 voter(s)" in str(alone.skip_reason)
    store.add_feedback(first.trace_id, "up", voter="bob")
    started = _tick(config, alone.cursor)
    assert started.run_requests and len(started.run_requests) == 1
    assert started.run_requests[0].tags["cia/new_feedback"] == "4"
    assert started.run_requests[0].tags["cia/new_voters"] == "2"
    assert started.cursor == '{"local_seq": 7}'
    assert not _tick(config, started.cursor).run_requests
    store.add_feedback(first.trace_id, "down", voter="alice")  # a changed vote is new to the cursor
    assert "1 new vote(s) from 1 voter(s)" in str(_tick(config, started.cursor).skip_reason)


def test_feedback_sensor_reads_langfuse_scores_when_configured(
    write_config: Callable[..., CiaConfig], langfuse: FakeLangfuse
) -> None:
    config = write_config(
        [],
        feedback={"min_new_feedback": 2, "min_voters": 2},
        langfuse={"host": langfuse.url, "public_key": PUBLIC_KEY, "secret_key": SECRET_KEY},
    )
    # Votes forwarded from the chat app (the voter in the metadata) and an annotation made in
    # Langfuse's UI (its author) both count; scores of other names (an evaluator's) do not.
    langfuse.scores.append(
        {"name": "user-feedback", "value": 1, "timestamp": "2026-11-20T10:00:00Z", "traceId": "t1",
         "metadata": {"source": "http", "voter": "alice"}}
    )  # fmt: skip
    langfuse.annotations.append(
        {"name": "user-feedback", "value": -1, "timestamp": "2026-11-20T11:00:00Z", "source": "ANNOTATION",
         "traceId": "t1", "authorUserId": "user-42"}
    )  # fmt: skip
    langfuse.annotations.append({"name": "faithfulness", "value": 0.2, "timestamp": "2026-11-20T12:00:00Z"})
    started = _tick(config)
    assert started.run_requests and started.run_requests[0].tags["cia/new_feedback"] == "2"
    assert started.run_requests[0].tags["cia/new_voters"] == "2"
    assert started.cursor == '{"langfuse_since": "2026-11-20T11:00:00+00:00"}'
    assert any(r.startswith("GET /api/public/v3/scores") for r in langfuse.requests)

    quiet = _tick(config, started.cursor)
    assert not quiet.run_requests and "0 new vote(s)" in str(quiet.skip_reason)
    langfuse.down = True
    down = _tick(config, started.cursor)
    assert "Langfuse did not answer" in str(down.skip_reason) and down.cursor == started.cursor
    langfuse.down = False
    stamp = datetime(2026, 11, 21, tzinfo=UTC).isoformat().replace("+00:00", "Z")
    vote = {"name": "user-feedback", "value": 1, "timestamp": stamp, "metadata": {"voter": "mallory"}}
    langfuse.scores += [{**vote, "traceId": f"t{n}"} for n in range(3)]
    assert "3 new vote(s) from 1 voter(s)" in str(_tick(config, started.cursor).skip_reason)
    langfuse.annotations.append({**vote, "traceId": "t1", "metadata": None, "authorUserId": "user-42"})
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
