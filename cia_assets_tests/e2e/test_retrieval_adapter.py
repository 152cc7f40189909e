"""The retrieval adapter: mined from a real repo's history, trained on CPU with the packaged
model, judged on commits it never saw, and gated by a blocking check."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from cia_assets.config import CiaConfig
from cia_assets.definitions import defs
from cia_assets.defs.indexing.assets import code_chunks
from cia_assets.defs.repos.assets import git_repo_snapshots
from cia_assets.defs.resources import CiaConfigResource, build_resources
from cia_assets.defs.training.retrieval import (
    retrieval_adapter,
    retrieval_adapter_beats_current_model,
    retrieval_embedding_model,
)
from cia_assets.lib.core.project import Project, open_embedder
from cia_assets.lib.indexing.embedding_models import active_model
from cia_assets.lib.indexing.embeddings import PACKAGED_MODEL, Embedder, EmbeddingCache, packaged_model_source
from cia_assets.lib.indexing.pipeline import read_index_state
from cia_assets.lib.learning.retrieval_adapter import (
    TrainingSettings,
    Triple,
    mine_triples,
    train_retrieval_adapter,
    weights_digest,
)
from cia_assets.lib.learning.retrieval_adapter_run import CANDIDATE, AdapterVerdict, candidate_record
from cia_assets.lib.retrieval.search import repo_embedder, search_code
from cia_assets.lib.sources.git_sync import RepoMirror
from cia_assets_tests.support.materialize import (
    asset_metadata,
    check_results,
    materialize_repo,
)
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
    instance = dg.DagsterInstance.ephemeral()
    materialize_repo(config, instance, "payments")  # the snapshot the adapter's history is read from
    result = dg.materialize(
        [retrieval_adapter, retrieval_adapter_beats_current_model],
        instance=instance,
        resources=build_resources(str(config.config_path)),
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
    assert retrieval_adapter_beats_current_model(cia=resource).passed is False  # nothing trained

    current = {"acc@1": 0.5, "acc@5": 0.8, "acc@10": 0.9, "mrr": 0.6}
    verdicts = {
        "better": ({**current, "mrr": 0.65}, True),
        "same": (dict(current), False),
        "higher mrr, lower acc@5": ({**current, "mrr": 0.7, "acc@5": 0.75}, False),
    }
    for name, (adapter, expected) in verdicts.items():
        verdict = AdapterVerdict(cases=20, current=current, adapter=adapter)
        candidate_record(config).parent.mkdir(parents=True, exist_ok=True)
        candidate_record(config).write_text(json.dumps({"verdict": verdict.__dict__}))
        result = retrieval_adapter_beats_current_model(cia=resource)
        assert result.passed is expected, name
        assert verdict.describe() == result.description


def _trained_candidate(config: CiaConfig, verdict: AdapterVerdict) -> str:
    """A real adapter (a few steps on hand-written triples), recorded as the last candidate
    with `verdict`, as `retrieval_adapter` leaves it; returns its model id."""
    lessons = [
        ("Shorten the refund deadline for every order to two weeks", "refunds", "ledger"),
        ("Record ledger transfers as debits of the source account balance", "ledger", "auth"),
    ]
    triples = [
        Triple(
            query=query,
            positive=f"payments/{good}.py\n" + SOURCES[f"payments/{good}.py"],
            negative=f"payments/{bad}.py\n" + SOURCES[f"payments/{bad}.py"],
            repo="payments",
            commit=str(n) * 40,
        )
        for n, (query, good, bad) in enumerate(lessons)
    ]
    folder = config.layout.retrieval_adapters / CANDIDATE
    adapter = train_retrieval_adapter(
        packaged_model_source(), triples, folder, TrainingSettings(batch_size=2, learning_rate=1e-3)
    )
    record = {"model_id": adapter.model_id, "model_dir": str(adapter.model_dir), "verdict": asdict(verdict)}
    candidate_record(config).write_text(json.dumps(record))
    return adapter.model_id


def _failure(result: dg.ExecuteInProcessResult) -> str:
    (failure,) = result.get_step_failure_events()
    return str(failure.event_specific_data)


class AutomationTicks:
    """The project's automation conditions evaluated tick after tick, as the daemon's
    automation sensor does (each tick sees what changed since the one before)."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self.definitions = defs()
        self.cursor: object = None

    def requested(self, asset: str) -> set[str]:
        result = dg.evaluate_automation_conditions(
            defs=self.definitions, instance=self.instance, cursor=self.cursor
        )
        self.cursor = result.cursor
        return set(result.get_requested_partitions(dg.AssetKey(asset)))


def test_a_promoted_adapter_re_embeds_every_repo_and_each_index_is_asked_in_its_own_model(
    make_repo: Callable[..., GitRepo],
    write_config: Callable[..., CiaConfig],
    project_of: Callable[[CiaConfig], Project],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    payments = make_repo("payments", SOURCES)
    shipping = make_repo("shipping", {"shipping/rates.py": "def shipping_rate(parcel):\n    return 5\n"})
    config = write_config([{"url": payments.url, "id": "payments"}, {"url": shipping.url, "id": "shipping"}])
    resources = build_resources(str(config.config_path))
    instance = dg.DagsterInstance.ephemeral()
    for repo in ("payments", "shipping"):
        materialize_repo(config, instance, repo)
    ticks = AutomationTicks(instance)
    packaged = read_index_state(config.layout.index_state("payments"))
    assert packaged is not None and packaged.model_id == PACKAGED_MODEL
    assert ticks.requested("chunk_embeddings") == set()
    # Never promoted: the missing model holds nothing back (eager alone would wait for it).
    shipping.commit({"shipping/rates.py": "def shipping_rate(parcel):\n    return 7\n"}, "Raise the rate")
    dg.materialize(
        [git_repo_snapshots, code_chunks], instance=instance, resources=resources, partition_key="shipping"
    )
    assert ticks.requested("chunk_embeddings") == {"shipping"}

    # A verdict that is not better is refused: nothing is promoted, nothing re-embedded.
    current = {"acc@1": 0.5, "acc@5": 0.8, "acc@10": 0.9, "mrr": 0.6}
    _trained_candidate(config, AdapterVerdict(cases=3, current=current, adapter=dict(current)))
    refused = dg.materialize(
        [retrieval_embedding_model], instance=instance, resources=resources, raise_on_error=False
    )
    assert not refused.success
    assert "not promoted: adapter not better than" in str(
        refused.get_step_failure_events()[0].event_specific_data
    )
    assert active_model(config).model_id == PACKAGED_MODEL
    assert ticks.requested("chunk_embeddings") == set()

    better = {**current, "mrr": 0.7}
    adapter_id = _trained_candidate(config, AdapterVerdict(cases=3, current=current, adapter=better))
    # A record naming weights the candidate folder no longer holds (a training run replaced
    # them before its verdict was written) is refused: only judged weights are promoted.
    judged = json.loads(candidate_record(config).read_text())
    candidate_record(config).write_text(
        json.dumps({**judged, "model_id": "cia-retrieval-adapter-" + "0" * 16})
    )
    replaced = dg.materialize(
        [retrieval_embedding_model], instance=instance, resources=resources, raise_on_error=False
    )
    assert "not the judged cia-retrieval-adapter-0000000000000000" in _failure(replaced)
    assert active_model(config).model_id == PACKAGED_MODEL
    candidate_record(config).write_text(json.dumps(judged))
    dg.materialize([retrieval_embedding_model], instance=instance, resources=resources)
    assert active_model(config).model_id == adapter_id
    # The promotion asks for every repo to be embedded again.
    assert ticks.requested("chunk_embeddings") == {"payments", "shipping"}

    # One repo re-indexed so far: it is built with the adapter (blue-green), the other is not.
    reindexed = materialize_repo(config, instance, "payments")
    assert asset_metadata(reindexed, "qdrant_collection")["mode"] == "full"
    assert check_results(reindexed) == dict.fromkeys(check_results(reindexed), True)
    state = read_index_state(config.layout.index_state("payments"))
    assert state is not None and state.model_id == adapter_id
    # Requested once: the next tick asks for nothing more (the daemon's runs are under way).
    assert ticks.requested("chunk_embeddings") == set()
    assert read_index_state(config.layout.index_state("shipping")).model_id == PACKAGED_MODEL  # type: ignore[union-attr]

    # A question over both is embedded once per model, each index asked in its own, and the
    # merge of the two repos compares each repo's chunks in its own model's vectors.
    asked: list[str] = []
    compared: list[str] = []
    embed_query, get_many = Embedder.embed_query, EmbeddingCache.get_many

    def spy_query(self: Embedder, text: str) -> np.ndarray:
        asked.append(self.model_id)
        return embed_query(self, text)

    def spy_vectors(self: EmbeddingCache, model_id: str, keys: Iterable[str]) -> dict[str, np.ndarray]:
        compared.append(model_id)
        return get_many(self, model_id, keys)

    monkeypatch.setattr(Embedder, "embed_query", spy_query)
    monkeypatch.setattr(EmbeddingCache, "get_many", spy_vectors)
    project = project_of(config)
    hits = search_code(project, "refund deadline shipping rate", k=10)
    assert sorted(asked) == sorted(compared) == sorted([adapter_id, PACKAGED_MODEL])
    assert {hit.repo for hit in hits} == {"payments", "shipping"}
    assert hits[0].path in {"payments/refunds.py", "shipping/rates.py"}
    # The live collection records its own model before the alias switches to it: an index
    # state left behind (a process killed between the switch and its write) does not mislead.
    state_path = config.layout.index_state("payments")
    state_path.write_text(state_path.read_text().replace(adapter_id, PACKAGED_MODEL))
    assert repo_embedder(project, "payments").model_id == adapter_id

    # A later candidate judged against the packaged model is stale once the adapter is in use.
    _trained_candidate(config, AdapterVerdict(cases=3, current=current, adapter=better))
    stale = dg.materialize(
        [retrieval_embedding_model], instance=instance, resources=resources, raise_on_error=False
    )
    assert "was judged against" in str(stale.get_step_failure_events()[0].event_specific_data)

    # Rollback: cia.yaml's model again, and every repo is asked for again.
    dg.materialize(
        [retrieval_embedding_model],
        instance=instance,
        resources=resources,
        run_config={"ops": {"retrieval_embedding_model": {"config": {"rollback": True}}}},
    )
    assert active_model(config).model_id == PACKAGED_MODEL
    assert ticks.requested("chunk_embeddings") == {"payments", "shipping"}
    # The adapter's folder stays: the payments index built with it still answers meanwhile.
    assert search_code(project, "refund deadline", repos=["payments"], k=1)[0].path == "payments/refunds.py"


def test_the_adapter_trains_in_the_gpu_trainer_pod_through_pipes(
    make_repo: Callable[..., GitRepo], write_config: Callable[..., CiaConfig], tmp_path: Path
) -> None:
    """`training.retrieval_adapter_backend: gpu`: the asset launches the trainer pod through
    dagster-k8s Pipes (a local fake of the Kubernetes API runs it as a process), the real pod
    script trains (on CPU here) and reports its loss; the asset exports and judges the result."""
    import kubernetes_validate

    from cia_assets.defs.resources import KubernetesResource
    from cia_assets_tests.support.fake_kubernetes import fake_kubernetes
    from cia_assets_tests.support.fake_trainer_pod import retrieval_trainer_pod

    repo, _ = _history(make_repo)
    config = write_config(
        [{"url": repo.url, "id": "payments"}],
        evaluation={"history_cases": 1},
        training={
            "retrieval_adapter_backend": "gpu",
            "gpu": {"image": "registry.example.com/cia/trainer:0.2.0"},
        },
    )
    instance = dg.DagsterInstance.ephemeral()
    materialize_repo(config, instance, "payments")
    with fake_kubernetes(retrieval_trainer_pod) as cluster:
        kubeconfig = cluster.kubeconfig(tmp_path / "kubeconfig", "default")
        resources = {
            **build_resources(str(config.config_path)),
            "kubernetes": KubernetesResource(kubeconfig_file=str(kubeconfig), poll_interval=0.2),
        }
        result = dg.materialize([retrieval_adapter], instance=instance, resources=resources)
    [pod] = cluster.created
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "pods.train_retrieval_adapter"]
    assert container["image"] == "registry.example.com/cia/trainer:0.2.0"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "Pod", **{k: v for k, v in pod.items() if k in ("metadata", "spec")}},
        "1.34.0",
        strict=True,
    )
    metadata = {
        k: v.value for k, v in result.asset_materializations_for_node("retrieval_adapter")[0].metadata.items()
    }
    # The pod's loss came back through Pipes; the training ran in it, on this machine's CPU.
    assert metadata["device"] == "cpu" and metadata["trained_on"] == 2
    assert metadata["loss_curve"] and all(point["loss"] >= 0 for point in metadata["loss_curve"])  # type: ignore[union-attr]
    record = json.loads(candidate_record(config).read_text())
    assert record["model_id"] == metadata["model_id"] and str(record["model_id"]).startswith(
        "cia-retrieval-adapter-"
    )
    # The base model went to the data volume for the pod, named by its weights; the trained
    # folder loads as an embedder.
    packaged_digest = weights_digest(packaged_model_source() / "model.safetensors")[:16]
    assert [p.name for p in config.layout.retrieval_adapters.glob("base-*")] == [f"base-{packaged_digest}"]
    adapted = config.model_copy(
        update={
            "embedding": config.embedding.model_copy(
                update={"model": record["model_id"], "path": Path(record["model_dir"])}
            )
        }
    )
    assert open_embedder(adapted).embed_query("refund deadline").shape == (384,)
