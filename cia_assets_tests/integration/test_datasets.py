"""The synthetic Q&A dataset and the training set, materialized for real against a real git
repo, real chunks and a local stand-in for a hosted teacher API (the real openai client talks
to it): planted secrets never reach the teacher, bad replies are dropped and counted, and the
train/eval split never shares a file."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import dagster as dg

from cia_assets.config import CiaConfig
from cia_assets.lib.core import artifacts
from cia_assets.lib.core.layout import DataLayout
from cia_assets_tests.support.fakes import fake_openai, teacher_reply
from cia_assets_tests.support.materialize import materialize_repo
from cia_assets_tests.support.repos import SAMPLE_FILES, GitRepo
from cia_assets_tests.support.secrets import SECRET_FILES, leaked


def _dataset_assets() -> list[Any]:
    from cia_assets.defs.datasets import checks
    from cia_assets.defs.datasets.assets import synthetic_qa_dataset

    return [
        synthetic_qa_dataset,
        checks.synthetic_pairs_match_schema,
        checks.synthetic_dataset_not_empty,
        checks.synthetic_dataset_has_no_secrets,
    ]


def _indexed(
    write_config: Callable[..., CiaConfig], repo: GitRepo, teacher_url: str, **extra: object
) -> CiaConfig:
    config = write_config(
        [{"url": repo.url, "id": "payments", "web_url": "https://git.example.com/acme/payments"}],
        datasets={
            "teacher": {"base_url": teacher_url, "model": "teacher-large"},
            "synthetic_pairs": 50,
            "min_chunk_lines": 1,
            **extra,
        },
    )
    return config


def test_secrets_never_reach_the_teacher_and_bad_pairs_are_dropped(
    write_config: Callable[..., CiaConfig], make_repo: Callable[..., GitRepo]
) -> None:
    from cia_assets.defs.resources import build_resources

    repo = make_repo("payments", {**SAMPLE_FILES, **SECRET_FILES})
    with fake_openai(teacher_reply) as teacher:
        # A teacher off this machine: the requests pass the egress redaction too.
        config = _indexed(write_config, repo, teacher.off_machine_url)
        instance = dg.DagsterInstance.ephemeral()
        materialize_repo(config, instance, "payments")
        result = dg.materialize(
            _dataset_assets(), instance=instance, resources=build_resources(str(config.config_path))
        )
        assert result.success
        sent = teacher.received_text() + json.dumps(teacher.requests, ensure_ascii=False)

    assert teacher.requests, "the teacher was never asked"
    assert not leaked(sent), "secrets reached the teacher"
    assert "<REDACTED>" in sent
    # The code around the secrets still went, so pairs about those files are possible.
    assert "def database_url(host):" in sent
    assert all(r["model"] == "teacher-large" for r in teacher.requests)
    assert all(r["response_format"] == {"type": "json_object"} for r in teacher.requests)

    metadata = {
        k: v.value
        for k, v in result.asset_materializations_for_node("synthetic_qa_dataset")[0].metadata.items()
    }
    assert metadata["requested"] == len(teacher.requests)
    assert metadata["dropped_uncited"] >= 1  # the Go chunks' answers cite nothing
    assert metadata["dropped_unparseable"] >= 1  # README sections got prose, not JSON
    assert metadata["redacted_chunks"] >= 2 and metadata["redactions"] >= 5
    assert (
        metadata["pairs"]
        == metadata["requested"]
        - metadata["dropped_uncited"]
        - metadata["dropped_unparseable"]
        - metadata["dropped_duplicate"]
    )
    strata = metadata["strata"]
    assert isinstance(strata, dict)
    assert set(strata["language"]) >= {"python", "typescript"}
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {
        "synthetic_pairs_match_schema": True,
        "synthetic_dataset_not_empty": True,
        "synthetic_dataset_has_no_secrets": True,
    }

    current = artifacts.current(DataLayout(config.data_dir).datasets / "synthetic")
    assert current is not None
    rows = artifacts.read_jsonl(current.path / "pairs.jsonl")
    assert len(rows) == metadata["pairs"]
    stored = json.dumps(rows)
    assert not leaked(stored)
    for row in rows:
        assert "[1]" in row["answer"]
        source = row["source"]
        assert source["url"].startswith("https://git.example.com/acme/payments/blob/")
        assert source["url"].endswith(f"{source['path']}#L{source['line_start']}-L{source['line_end']}")


def test_a_teacher_that_yields_nothing_publishes_nothing(
    write_config: Callable[..., CiaConfig], make_repo: Callable[..., GitRepo]
) -> None:
    from cia_assets.defs.resources import build_resources

    repo = make_repo("payments", SAMPLE_FILES)
    with fake_openai(teacher_reply) as good, fake_openai(lambda request: "no JSON at all") as bad:
        config = _indexed(write_config, repo, good.base_url)
        instance = dg.DagsterInstance.ephemeral()
        materialize_repo(config, instance, "payments")
        resources = build_resources(str(config.config_path))
        assert dg.materialize(_dataset_assets(), instance=instance, resources=resources).success
        root = DataLayout(config.data_dir).datasets / "synthetic"
        before = artifacts.current(root)
        assert before is not None

        config = _indexed(write_config, repo, bad.base_url)
        failed = dg.materialize(
            _dataset_assets(), instance=instance, resources=resources, raise_on_error=False
        )
        assert not failed.success
        failure = next(e for e in failed.all_events if e.event_type_value == "STEP_FAILURE")
        assert "produced no usable pair" in str(failure.event_specific_data)
        after = artifacts.current(root)
        assert after is not None and after.version == before.version


def test_training_split_keeps_every_file_on_one_side(
    write_config: Callable[..., CiaConfig], make_repo: Callable[..., GitRepo]
) -> None:
    from cia_assets.defs.datasets.assets import training_dataset
    from cia_assets.defs.resources import build_resources

    files: dict[str, str | bytes | None] = dict(SAMPLE_FILES)
    for index in range(8):
        files[f"billing/rule_{index}.py"] = (
            f"def apply_rule_{index}(invoice):\n"
            f'    """Rule {index}: adds fee {index} to an invoice."""\n'
            f"    invoice.total += {index}\n"
            "    return invoice\n"
        )
    repo = make_repo("payments", files)
    with fake_openai(teacher_reply) as teacher:
        config = _indexed(write_config, repo, teacher.base_url, eval_share=0.3)
        instance = dg.DagsterInstance.ephemeral()
        materialize_repo(config, instance, "payments")
        resources = build_resources(str(config.config_path))
        assert dg.materialize(_dataset_assets(), instance=instance, resources=resources).success
    result = dg.materialize([training_dataset], instance=instance, resources=resources)
    metadata = {
        k: v.value for k, v in result.asset_materializations_for_node("training_dataset")[0].metadata.items()
    }
    assert metadata["files_in_both_splits"] == 0
    assert metadata["train_examples"] > 0 and metadata["eval_examples"] > 0

    current = artifacts.current(DataLayout(config.data_dir).datasets / "training")
    assert current is not None
    train = artifacts.read_jsonl(current.path / "train.jsonl")
    evaluation = artifacts.read_jsonl(current.path / "eval.jsonl")
    train_files = {row["file_key"] for row in train}
    eval_files = {row["file_key"] for row in evaluation}
    assert train_files and eval_files and not train_files & eval_files
    assert metadata["abstention_examples"] == sum(row["origin"] == "abstention" for row in train) > 0
    for row in train + evaluation:
        system, user, assistant = row["messages"]
        assert (system["role"], user["role"], assistant["role"]) == ("system", "user", "assistant")
        # The source and one distractor from another file of the same side are shown; the
        # answer cites the source by the number it has in this example.
        shown = re.findall(r"^\[(\d+)\] (\S+) lines", user["content"], flags=re.M)
        assert len(shown) == 2
        if row["origin"] == "abstention":  # its question shown with two other train files only
            assert row in train and assistant["content"] == "NOT FOUND" and row["source"] is None
            assert {f"payments:{path}" for _, path in shown} <= train_files - {row["file_key"]}
            continue
        own = next(n for n, path in shown if path == row["source"]["path"])
        assert f"[{own}]" in assistant["content"]
        other_path = next(path for n, path in shown if n != own)
        other_key = f"payments:{other_path}"
        assert other_key in (train_files if row in train else eval_files)
        assert row["question"] in user["content"]
