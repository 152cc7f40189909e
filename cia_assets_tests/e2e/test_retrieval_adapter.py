"""The retrieval adapter: mined from a real repo's history, trained on CPU with the packaged
model, judged on commits it never saw, and gated by a blocking check."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import numpy as np

from cia_assets.config import CiaConfig
from cia_assets.defs.resources import CiaConfigResource
from cia_assets.defs.training.retrieval import retrieval_adapter, retrieval_adapter_beats_packaged_model
from cia_assets.lib.core.project import open_embedder
from cia_assets.lib.learning.retrieval_adapter import mine_triples
from cia_assets.lib.learning.retrieval_adapter_run import AdapterVerdict, candidate_record
from cia_assets.lib.sources.git_sync import RepoMirror
from cia_assets_tests.support.materialize import materialize_repo
from cia_assets_tests.support.repos import GitRepo

SOURCES = {
    "payments/refunds.py": (
        "def refund_deadline_days(order):\n    return 30\n\n\ndef refund_fee(order):\n    return 2\n"
    ),
    "payments/ledger.py": (
        "class Ledger:\n    def transfer(self, source, target, amount):\n        return amount\n"
    ),
    "payments/auth.py": "def can_pay(user):\n    return user.active\n",
    "tests/test_refunds.py": "def test_deadline():\n    assert True\n",
}


def _history(make_repo: Callable[..., GitRepo]) -> tuple[GitRepo, list[str]]:
    repo = make_repo("payments", SOURCES)
    commits = [repo.git("rev-parse", "HEAD")]
    commits.append(
        repo.commit(
            {"payments/refunds.py": SOURCES["payments/refunds.py"].replace("30", "14")},
            "Shorten the refund deadline for every order to two weeks",
        )
    )
    commits.append(
        repo.commit(
            {"payments/ledger.py": SOURCES["payments/ledger.py"].replace("return amount", "return -amount")},
            "Record ledger transfers as debits of the source account balance",
        )
    )
    commits.append(
        repo.commit(
            {
                "payments/auth.py": SOURCES["payments/auth.py"]
                + "\n\ndef is_admin(user):\n    return user.admin\n"
            },
            "Let administrators bypass the permission check for every payment action",
        )
    )
    return repo, commits


def test_triples_pair_a_commit_message_with_the_code_it_changed(
    make_repo: Callable[..., GitRepo], tmp_path: Path
) -> None:
    repo, commits = _history(make_repo)
    mirror = RepoMirror(tmp_path / "mirror.git", repo.url, "main")
    mirror.sync()
    try:
        # Only commits reachable from `before` count: not the newest one.
        triples = mine_triples(mirror, commits[2], repo="payments", exclude=("tests/*",))
    finally:
        mirror.close()
    assert [t.query for t in triples] == [
        "Record ledger transfers as debits of the source account balance",
        "Shorten the refund deadline for every order to two weeks",
    ]
    ledger, refunds = triples
    # The positive is the changed chunk as it was before the change, embedded as the index
    # embeds it (path first); the negative is another source file's chunk, never a test.
    assert ledger.positive.startswith("payments/ledger.py\n") and "return amount" in ledger.positive
    assert refunds.positive.startswith("payments/refunds.py\n") and "return 30" in refunds.positive
    assert "refund_fee" not in refunds.positive  # only the chunk the commit changed
    for triple in triples:
        assert not triple.negative.startswith(triple.positive.split("\n", 1)[0])
        assert not triple.negative.startswith("tests/")
    assert all(t.commit not in commits[3:] for t in triples)


def test_the_adapter_is_trained_judged_and_gated(
    make_repo: Callable[..., GitRepo], write_config: Callable[..., CiaConfig], tmp_path: Path
) -> None:
    repo, _ = _history(make_repo)
    config = write_config([{"url": repo.url, "id": "payments"}], evaluation={"history_cases": 1})
    resource = CiaConfigResource(config_path=str(config.config_path))
    instance = dg.DagsterInstance.ephemeral()
    materialize_repo(config, instance, "payments")  # the snapshot the adapter's history is read from
    result = dg.materialize(
        [retrieval_adapter, retrieval_adapter_beats_packaged_model],
        instance=instance,
        resources={"cia": resource},
        raise_on_error=False,  # a blocking check that fails fails the run; its verdict is read below
    )
    metadata = result.asset_materializations_for_node("retrieval_adapter")[0].metadata
    # The newest descriptive commit is the benchmark; the two before it are the training set.
    assert metadata["history_cases"].value == 1
    assert metadata["triples"].value == {"payments": 2}
    (check,) = result.get_asset_check_evaluations()
    record = json.loads(candidate_record(config).read_text())
    assert check.passed == record["better"]
    assert "history cases" in (check.description or "")

    # The adapter is a model folder the embedder loads like the packaged one, under its own id.
    adapted = config.model_copy(
        update={
            "embedding": config.embedding.model_copy(
                update={"model": record["model_id"], "path": Path(record["model_dir"])}
            )
        }
    )
    adapter_embedder, packaged_embedder = open_embedder(adapted), open_embedder(config)
    assert adapter_embedder.model_id.startswith("cia-retrieval-adapter-")
    query = "who may bypass the permission check"
    adapted_vector, packaged_vector = (
        adapter_embedder.embed_query(query),
        packaged_embedder.embed_query(query),
    )
    assert adapted_vector.shape == packaged_vector.shape
    assert not np.array_equal(adapted_vector, packaged_vector)  # training changed the weights


def test_the_gate_passes_only_an_adapter_that_retrieves_better(
    make_repo: Callable[..., GitRepo], write_config: Callable[..., CiaConfig]
) -> None:
    repo = make_repo("payments", SOURCES)
    config = write_config([{"url": repo.url, "id": "payments"}])
    resource = CiaConfigResource(config_path=str(config.config_path))
    assert retrieval_adapter_beats_packaged_model(cia=resource).passed is False  # nothing trained

    packaged = {"acc@1": 0.5, "acc@5": 0.8, "acc@10": 0.9, "mrr": 0.6}
    verdicts = {
        "better": ({**packaged, "mrr": 0.65}, True),
        "same": (dict(packaged), False),
        "higher mrr, lower acc@5": ({**packaged, "mrr": 0.7, "acc@5": 0.75}, False),
    }
    for name, (adapter, expected) in verdicts.items():
        verdict = AdapterVerdict(cases=20, packaged=packaged, adapter=adapter)
        candidate_record(config).parent.mkdir(parents=True, exist_ok=True)
        candidate_record(config).write_text(json.dumps({"verdict": verdict.__dict__}))
        result = retrieval_adapter_beats_packaged_model(cia=resource)
        assert result.passed is expected, name
        assert verdict.describe() == result.description
