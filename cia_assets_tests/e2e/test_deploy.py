"""deploy/ checked offline: every manifest validates against the Kubernetes schema, GPU work
lands on the GPU node group with the GPU resource, nothing runs as root, secrets only come
from Secrets; and the cluster's cia.yaml drives the same asset graph against local stand-ins
(qdrant-client's in-memory engine for the Qdrant server, a local OpenAI-compatible server for
vLLM, a local Langfuse)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import kubernetes_validate
import pytest
import yaml

from cia_assets.config import load_config, required_env_variables
from cia_assets_tests.support.fake_kubernetes import trainer_pod_as_submitted
from cia_assets_tests.support.fake_trainer_pod import publish_training_set, train_in_fake_cluster
from cia_assets_tests.support.net import free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S_VERSION = "1.34.0"
PINNED = re.compile(r"[A-Za-z0-9_.\-\[\]]+==[\w.+]+")
SECRET_NAME = re.compile(r"(KEY|TOKEN|PASSWORD|SECRET)", re.IGNORECASE)


CLUSTER_CONFIG = DEPLOY / "k8s" / "cia.yaml"


@pytest.fixture
def cluster_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Every variable the cluster's cia.yaml needs, as its pods get them from Secrets; tests
    override the ones their stand-ins answer on."""
    for variable in required_env_variables(CLUSTER_CONFIG):
        monkeypatch.setenv(variable, f"placeholder-{variable.lower()}")
    return monkeypatch


def cluster_trainer_pod() -> dict[str, Any]:
    """The GPU trainer pod as Dagster submits it with the cluster's cia.yaml."""
    return trainer_pod_as_submitted(load_config(CLUSTER_CONFIG))


def manifests() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    documents: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        documents.extend(d for d in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if d)
    for generator in kustomization["configMapGenerator"]:
        data = {f: (DEPLOY / "k8s" / f).read_text() for f in generator["files"]}
        documents.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}
        )
    return documents


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for document in manifests():
        if document["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            yield document["metadata"]["name"], document["spec"]["template"]["spec"]


def dagster_values() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "helm" / "dagster-values.yaml").read_text())


def dagster_pods() -> Iterator[tuple[str, dict[str, Any]]]:
    """The pods the Dagster chart makes from these values, as far as the values define them."""
    values = dagster_values()
    for deployment in values["dagster-user-deployments"]["deployments"]:
        image = deployment["image"]
        yield (
            f"user-deployment {deployment['name']}",
            {
                "securityContext": deployment["podSecurityContext"],
                "volumes": deployment["volumes"],
                "containers": [
                    {
                        "name": deployment["name"],
                        "image": f"{image['repository']}:{image['tag']}",
                        "args": ["dagster", "api", "grpc", *deployment["dagsterApiGrpcArgs"]],
                        "env": deployment["env"],
                        "envFrom": [{"secretRef": {"name": s["name"]}} for s in deployment["envSecrets"]],
                        "volumeMounts": deployment["volumeMounts"],
                        "securityContext": deployment["securityContext"],
                        "resources": deployment["resources"],
                    }
                ],
            },
        )
    yield "run pod", run_pod_as_launched()["spec"]


def run_pod_as_launched() -> dict[str, Any]:
    """A run pod as the K8s run launcher builds it from these values, through dagster-k8s's own
    code: the launcher's settings, then the code location's when includeConfigInLaunchedRuns
    (merged last, as `K8sContainerContext.create_for_run` does)."""
    import kubernetes
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job

    values = dagster_values()
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    run_config = launcher["runK8sConfig"]
    context = K8sContainerContext(
        namespace=launcher["jobNamespace"],
        env_secrets=[s["name"] for s in launcher.get("envSecrets", [])],
        volumes=launcher.get("volumes", []),
        volume_mounts=launcher.get("volumeMounts", []),
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(
            {
                "container_config": run_config["containerConfig"],
                "pod_spec_config": run_config["podSpecConfig"],
            }
        ),
    )
    [deployment] = values["dagster-user-deployments"]["deployments"]
    if deployment["includeConfigInLaunchedRuns"]["enabled"]:
        context = context.merge(
            K8sContainerContext.create_from_config(
                {
                    "k8s": {
                        "env": deployment.get("env", []),
                        "env_secrets": [s["name"] for s in deployment.get("envSecrets", [])],
                        "volumes": deployment.get("volumes", []),
                        "volume_mounts": deployment.get("volumeMounts", []),
                        "resources": deployment.get("resources", {}),
                    }
                }
            )
        )
    job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(
            job_image="registry.example.com/cia/code-location:0.1.0",
            dagster_home="/opt/dagster/dagster_home",
            image_pull_policy="IfNotPresent",
            service_account_name=values["global"]["serviceAccountName"],
            instance_config_map="dagster-instance",
            postgres_password_secret=values["global"]["postgresqlSecretName"],
        ),
        args=["dagster", "api", "execute_run", "{}"],
        job_name="dagster-run-0123",
        component="run_worker",
        user_defined_k8s_config=context.run_k8s_config,
    )
    template = kubernetes.client.ApiClient().sanitize_for_serialization(job.spec.template)
    metadata = {"name": "dagster-run-0123", **template["metadata"]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}


@pytest.mark.usefixtures("cluster_env")
def test_every_manifest_validates_against_the_kubernetes_schema() -> None:
    documents = manifests()
    kinds = {d["kind"] for d in documents}
    assert {
        "Deployment",
        "Service",
        "Ingress",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "ConfigMap",
    } <= kinds
    for document in documents:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)
    for name, spec in dagster_pods():
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name.replace(" ", "-")}, "spec": spec}
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    kubernetes_validate.validate(cluster_trainer_pod(), K8S_VERSION, strict=True)


@pytest.mark.usefixtures("cluster_env")
def test_no_pod_runs_as_root_and_secrets_only_come_from_secrets() -> None:
    checked = 0
    for name, spec in [*pod_specs(), *dagster_pods(), ("trainer", cluster_trainer_pod()["spec"])]:
        pod_context = spec.get("securityContext", {})
        assert pod_context.get("runAsNonRoot") is True, name
        # Pod Security `restricted` (the namespace enforces it) also wants the runtime's seccomp.
        assert pod_context.get("seccompProfile") == {"type": "RuntimeDefault"}, name
        assert pod_context.get("runAsUser", 0) != 0, name
        for container in spec["containers"]:
            context = container.get("securityContext", {})
            assert context.get("allowPrivilegeEscalation") is False, (name, container["name"])
            assert context.get("capabilities", {}).get("drop") == ["ALL"], (name, container["name"])
            for variable in container.get("env", []):
                if SECRET_NAME.search(variable["name"]):
                    assert "value" not in variable, f"{name}: {variable['name']} must come from a Secret"
                    assert "secretKeyRef" in variable["valueFrom"], (name, variable["name"])
            checked += 1
        assert not any("hostPath" in volume for volume in spec.get("volumes", [])), name
    assert checked >= 6
    for values_file in (DEPLOY / "helm").glob("*.yaml"):
        text = values_file.read_text()
        assert not re.search(
            r"(?i)(password|secret|api_?key|token)[ \t]*:[ \t]*['\"]?[A-Za-z0-9+/]{12,}", text
        ), values_file


@pytest.mark.usefixtures("cluster_env")
def test_gpu_work_requests_the_gpu_and_lands_on_the_gpu_node_group() -> None:
    specs = dict(pod_specs())
    vllm = specs["vllm"]
    [container] = vllm["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert vllm["nodeSelector"]["cia.example.com/node-group"] == "gpu"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in vllm["tolerations"]
    assert "--enable-lora" in container["args"]
    models = next(m for m in container["volumeMounts"] if m["name"] == "models")
    assert models["readOnly"] is True
    claim = next(v for v in vllm["volumes"] if v["name"] == "models")["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    # CPU work stays off the GPU nodes.
    for name, spec in specs.items():
        if name != "vllm":
            assert not any(
                "nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) for c in spec["containers"]
            )
    run = dagster_values()["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"]
    assert run["nodeSelector"]["cia.example.com/node-group"] == "cpu"
    # The learning loop's trainer: the same node group and taint as vLLM, the model cache read-only,
    # and a deadline so a hung trainer gives the GPU back.
    trainer = cluster_trainer_pod()["spec"]
    [container] = trainer["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert trainer["nodeSelector"] == vllm["nodeSelector"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in trainer["tolerations"]
    assert next(m for m in container["volumeMounts"] if m["name"] == "models")["readOnly"] is True
    assert 0 < trainer["activeDeadlineSeconds"] <= 24 * 3600


def test_egress_is_denied_but_to_git_and_the_allowed_teacher() -> None:
    policies = {d["metadata"]["name"]: d["spec"] for d in manifests() if d["kind"] == "NetworkPolicy"}
    deny = policies["default-deny"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "egress" not in deny and "ingress" not in deny
    external = {
        name: [
            peer["ipBlock"]["cidr"]
            for rule in spec.get("egress", [])
            for peer in rule["to"]
            if "ipBlock" in peer
        ]
        for name, spec in policies.items()
    }
    assert {name for name, cidrs in external.items() if cidrs} == {
        "git-remotes",
        "kubernetes-api",
        "teacher-endpoint",
    }
    teacher = policies["teacher-endpoint"]
    assert teacher["podSelector"] == {"matchLabels": {"cia.example.com/teacher-egress": "true"}}
    assert all(cidr.endswith("/32") for cidr in external["teacher-endpoint"])


def test_dockerfiles_pin_their_bases_and_run_as_a_user() -> None:
    for dockerfile in (DEPLOY / "docker").glob("*.Dockerfile"):
        lines = [line.strip() for line in dockerfile.read_text().splitlines()]
        bases = [line.split()[1] for line in lines if line.startswith("FROM ")]
        assert bases and all(":" in b and not b.endswith(":latest") for b in bases), dockerfile
        users = [line.split()[1] for line in lines if line.startswith("USER ")]
        assert users and users[-1].split(":")[0] not in ("0", "root"), dockerfile
        assert not any(re.match(r"(ENV|ARG)\s+\S*(KEY|TOKEN|PASSWORD|SECRET)", line) for line in lines), (
            dockerfile
        )
        text = dockerfile.read_text()
        assert "unsloth" not in text or dockerfile.name == "trainer.Dockerfile", dockerfile
        # Every package is pinned: named with ==, or through the lock file.
        for command in re.sub(r"\\\n", " ", text).splitlines():
            if command.startswith("RUN") and "pip install" in command:
                for requirement in re.findall(r'"([^"$]+)"', command):
                    assert PINNED.fullmatch(requirement), (dockerfile, requirement)
    code_location = (DEPLOY / "docker" / "code-location.Dockerfile").read_text()
    assert "cia_assets.definitions" in code_location and "requirements.lock" in code_location
    # The manifest is prepared at build time: the code location cannot load without it.
    assert "dagster-dbt project prepare-and-package" in code_location


def test_the_dashboard_plots_metrics_the_app_exports() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from cia_assets.lib.observability.metrics import AnswerMetrics

    registry = CollectorRegistry()
    AnswerMetrics(registry)
    exported = set(re.findall(r"^# TYPE (\w+)", generate_latest(registry).decode(), re.MULTILINE))
    exported |= {"cia_index_chunks", "cia_index_files", "cia_index_snapshot_age_seconds"}
    dashboard = json.loads((DEPLOY / "grafana" / "cia-dashboard.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(cia_[a-z_]+)", target["expr"])
    }
    base = {re.sub(r"_(bucket|count|sum|total)$", "", name) for name in used}
    assert base <= {re.sub(r"_total$", "", name) for name in exported}, base
    assert any("vllm:" in t["expr"] for p in dashboard["panels"] for t in p["targets"])


def test_the_cluster_config_drives_the_same_graph_against_local_stand_ins(
    tmp_path: Path, model_dir: Path, make_repo: Any, write_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cia_assets.defs.resources import build_resources
    from cia_assets.defs.serving.assets import served_endpoint
    from cia_assets.lib.answering.answer import AskRequest
    from cia_assets.lib.answering.service import AssistantService
    from cia_assets.lib.core.access import authorize
    from cia_assets.lib.serving.endpoint import current_endpoint, ensure_endpoint, stop_local_endpoint
    from cia_assets_tests.support.fake_langfuse import PUBLIC_KEY, SECRET_KEY, start_fake_langfuse
    from cia_assets_tests.support.materialize import materialize_repo
    from cia_assets_tests.support.repos import SAMPLE_FILES

    # The stand-in for vLLM: a llama.cpp server, OpenAI-compatible, started elsewhere.
    vllm_stand_in = write_config([], llm={"port": free_port()})
    upstream = ensure_endpoint(vllm_stand_in)
    langfuse = start_fake_langfuse()
    try:
        for name, value in {
            "QDRANT_URL": ":memory:",
            "QDRANT_API_KEY": "unused-locally",
            "VLLM_BASE_URL": upstream.base_url,
            "VLLM_API_KEY": "unused-locally",
            "CIA_TOKEN_ENGINEERING": "engineering-token-0123",
            "LANGFUSE_HOST": langfuse.url,
            "LANGFUSE_PUBLIC_KEY": PUBLIC_KEY,
            "LANGFUSE_SECRET_KEY": SECRET_KEY,
            # The MLflow server is a local SQLite store here; the loop's other settings are
            # left unset, as in the chat app's pod (cia.yaml defaults them).
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        }.items():
            monkeypatch.setenv(name, value)
        cluster = yaml.safe_load((DEPLOY / "k8s" / "cia.yaml").read_text())
        repo = make_repo("payments", SAMPLE_FILES)
        # Only what cannot exist here changes: the data volume, the git server, the model's
        # local path, and the served model's name on the stand-in.
        cluster["data_dir"] = str(tmp_path / "cluster-data")
        cluster["codebases"] = [{"url": repo.url, "id": "payments"}]
        cluster["embedding"]["path"] = str(model_dir)
        cluster["llm"]["model"] = upstream.model
        path = tmp_path / "cluster" / "cia.yaml"
        path.parent.mkdir()
        path.write_text(yaml.safe_dump(cluster))
        config = load_config(path)
        assert config.vector_store.backend == "server" and config.llm.engine == "vllm"
        assert config.training.backend == "gpu" and config.mlflow.tracking_uri.startswith("sqlite:")  # type: ignore[union-attr]

        instance = dg.DagsterInstance.ephemeral()
        result = materialize_repo(config, instance, "payments")
        assert result.success
        served = dg.materialize([served_endpoint], instance=instance, resources=build_resources(str(path)))
        assert served.success
        record = current_endpoint(config)
        assert record is not None and (record.engine, record.base_url, record.pid) == (
            "vllm",
            upstream.base_url,
            None,
        )

        service = AssistantService(config)
        try:
            grant = authorize(config, os.environ["CIA_TOKEN_ENGINEERING"])
            answer = service.answerer.ask(AskRequest(question="How are API tokens validated?", grant=grant))
            service.flush()
        finally:
            service.close()
        assert answer.model == upstream.model
        assert any("payments/auth.py" in where for where in answer.searched)
        assert all(c.repo == "payments" for c in answer.citations)
        assert answer.trace_id in langfuse.traces()
    finally:
        langfuse.close()
        stop_local_endpoint(vllm_stand_in)


def test_the_cluster_config_trains_the_adapter_in_a_gpu_pod_through_kubernetes(
    tmp_path: Path, cluster_env: pytest.MonkeyPatch
) -> None:
    from cia_assets.lib.learning.registry import AdapterRegistry

    # The MLflow server is a local SQLite store here; the Kubernetes API is the fake one.
    cluster_env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cluster = yaml.safe_load(CLUSTER_CONFIG.read_text())
    cluster["data_dir"] = str(tmp_path / "cluster-data")
    path = tmp_path / "cluster" / "cia.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(cluster))
    config = load_config(path)
    publish_training_set(config)
    result, api = train_in_fake_cluster(config, "ok", tmp_path)
    [pod] = api.created
    assert result.success
    # Exactly the pod the manifests tests check, in the namespace cia.yaml names.
    assert pod["metadata"]["namespace"] == "cia"
    assert pod["spec"]["nodeSelector"]["cia.example.com/node-group"] == "gpu"
    [container] = pod["spec"]["containers"]
    assert container["image"] == "registry.example.com/cia/trainer:0.1.0"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    version = AdapterRegistry(config).by_alias("challenger")
    assert version is not None and version.tags["base_model"] == "/models/Qwen2.5-Coder-1.5B-Instruct"


def test_the_gpu_pool_is_limited_in_the_dagster_values(tmp_path: Path) -> None:
    from dagster._core.instance.config import dagster_instance_config

    from cia_assets.definitions import defs

    # The chart renders `concurrency` into dagster.yaml only when enabled; `pools.defaultLimit`
    # is the gpu pool's limit only while gpu is the one pool the code uses.
    graph = defs().resolve_asset_graph()
    pools = {pool for key in graph.get_all_asset_keys() for pool in graph.get(key).pools or ()}
    assert pools == {"gpu"}
    values = dagster_values()
    concurrency = values["concurrency"]
    assert concurrency["enabled"] is True and concurrency["pools"]["defaultLimit"] >= 1
    # What the chart then writes; Dagster itself refuses the run coordinator's
    # max_concurrent_runs beside it, so the run limit must live in `concurrency.runs`.
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert "maxConcurrentRuns" not in queued
    (tmp_path / "dagster.yaml").write_text(
        yaml.safe_dump(
            {
                "run_coordinator": {
                    "module": "dagster.core.run_coordinator",
                    "class": "QueuedRunCoordinator",
                },
                "concurrency": {
                    "pools": {"default_limit": concurrency["pools"]["defaultLimit"]},
                    "runs": {"max_concurrent_runs": concurrency["runs"]["maxConcurrentRuns"]},
                },
            }
        )
    )
    dagster_instance_config(str(tmp_path))


def test_qdrant_values_keep_its_pod_restricted_and_its_key_in_a_secret() -> None:
    values = yaml.safe_load((DEPLOY / "helm" / "qdrant-values.yaml").read_text())
    # The unprivileged image: without it the chart adds a root init container to chown volumes.
    assert values["image"]["useUnprivilegedImage"] is True
    assert values["podSecurityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert values["containerSecurityContext"]["capabilities"] == {"drop": ["ALL"]}
    # Not the chart's `apiKey.valueFrom`: it reads the Secret with Helm's lookup, empty when a
    # GitOps tool renders offline. The key comes from the Secret the apps read it from.
    assert "apiKey" not in values
    [key] = [e for e in values["env"] if e["name"] == "QDRANT__SERVICE__API_KEY"]
    secret = key["valueFrom"]["secretKeyRef"]
    assert values["metrics"]["serviceMonitor"]["authorization"]["credentials"] == secret
    chat = next(spec for name, spec in pod_specs() if name == "cia-chat")
    chat_env = {e["name"]: e for c in chat["containers"] for e in c.get("env", [])}
    assert chat_env["QDRANT_API_KEY"]["valueFrom"]["secretKeyRef"] == secret


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against a pod's labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value, operator = labels.get(expression["key"]), expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value in expression["values"]:
            return False
        if operator == "Exists" and value is None:
            return False
        if operator == "DoesNotExist" and value is not None:
            return False
    return True


@pytest.mark.usefixtures("cluster_env")
def test_only_dagsters_own_pods_reach_the_kubernetes_api() -> None:
    from dagster_k8s.utils import get_common_labels

    policy = next(d["spec"] for d in manifests() if d["metadata"]["name"] == "kubernetes-api")
    assert {p["port"] for rule in policy["egress"] for p in rule["ports"]} == {443, 6443}
    selector = policy["podSelector"]
    # A run pod as dagster-k8s labels it (the daemon and webserver carry the chart's
    # app.kubernetes.io/name: dagster too): it launches the trainer pod through Pipes.
    assert _selects(selector, run_pod_as_launched()["metadata"]["labels"])
    assert _selects(selector, get_common_labels())
    # The trainer pod as Dagster submits it: it needs no API and gets none.
    assert not _selects(selector, cluster_trainer_pod()["metadata"]["labels"])
    # Nor anything of CIA's own: the chat app, vLLM, MLflow.
    for document in manifests():
        if document["kind"] == "Deployment":
            labels = document["spec"]["template"]["metadata"]["labels"]
            assert not _selects(selector, labels), document["metadata"]["name"]


def test_run_pods_get_the_launchers_size_and_the_code_locations_environment() -> None:
    pod = run_pod_as_launched()
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    [container] = pod["spec"]["containers"]
    launcher = dagster_values()["runLauncher"]["config"]["k8sRunLauncher"]
    # Sized for embedding, not as the small code server (whose settings dagster-k8s would merge
    # last if they were included in launched runs).
    assert container["resources"] == launcher["runK8sConfig"]["containerConfig"]["resources"]
    [deployment] = dagster_values()["dagster-user-deployments"]["deployments"]
    assert container["resources"] != deployment["resources"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert {e["name"]: e.get("value") for e in deployment["env"]}.items() <= env.items()
    assert {"secretRef": {"name": "cia-env"}} in container["envFrom"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["data"] == "/data" and mounts["config"] == "/etc/cia"
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["spec"]["volumes"]}
    assert claims["data"] == "cia-data"
    # The cluster's data_dir lives on that volume, as the trainer pod and the chat app see it.
    assert str(yaml.safe_load(CLUSTER_CONFIG.read_text())["data_dir"]).startswith("/data/")
    assert pod["spec"]["nodeSelector"] == {"cia.example.com/node-group": "cpu"}


def test_langfuse_values_pin_every_generated_secret() -> None:
    values = yaml.safe_load((DEPLOY / "helm" / "langfuse-values.yaml").read_text())
    app = values["langfuse"]
    # Values the chart would generate with Helm's lookup, anew on every offline GitOps render.
    for ref in (app["salt"], app["encryptionKey"], app["nextauth"]["secret"]):
        assert set(ref) == {"secretKeyRef"}, ref
    # Chart 2.0.0 refuses to render an existingSecret for a bundled store unless the store's
    # own sub-chart is pointed at a Secret too.
    postgres = values["postgresql"]
    assert postgres["settings"]["existingSecret"] == postgres["userDatabase"]["existingSecret"]
    assert postgres["auth"]["existingSecret"] == postgres["settings"]["existingSecret"]
    assert values["redis"]["auth"]["usersExistingSecret"] == values["redis"]["auth"]["existingSecret"]
    assert values["s3"]["allInOne"]["s3"]["existingConfigSecret"] == values["s3"]["auth"]["existingSecret"]
    # Each Secret named here is created in deploy/README.md.
    readme = (DEPLOY / "README.md").read_text()
    named = {ref["secretKeyRef"]["name"] for ref in (app["salt"], app["encryptionKey"])}
    stores = ("postgresql", "clickhouse", "redis", "s3")
    named |= {values[store]["auth"]["existingSecret"] for store in stores}
    for secret in named:
        assert f"create secret generic {secret} " in readme, secret


def test_a_dead_model_server_takes_the_chat_app_out_of_the_service_but_never_restarts_it(
    tmp_path: Path, cluster_env: pytest.MonkeyPatch
) -> None:
    """The probes of the chat app's pod against the app itself, with vLLM down, then up."""
    import http.server
    import threading

    from fastapi.testclient import TestClient

    from cia_assets.apps.http.app import create_app
    from cia_assets.lib.core.fsio import write_json_atomic
    from cia_assets.lib.core.layout import DataLayout
    from cia_assets.lib.core.records import utc_now
    from cia_assets.lib.serving.endpoint import EndpointRecord, EndpointSpec

    [container] = next(spec for name, spec in pod_specs() if name == "cia-chat")["containers"]
    readiness, liveness = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert readiness["port"] == liveness["port"] == "http"

    port = free_port()
    vllm = f"http://127.0.0.1:{port}/v1"
    cluster_env.setenv("VLLM_BASE_URL", vllm)
    cluster = yaml.safe_load(CLUSTER_CONFIG.read_text())
    cluster["data_dir"] = str(tmp_path / "data")
    path = tmp_path / "cia.yaml"
    path.write_text(yaml.safe_dump(cluster))
    config = load_config(path)
    client = TestClient(create_app(path))

    no_endpoint = client.get(readiness["path"])
    assert no_endpoint.status_code == 503
    assert no_endpoint.json()["problems"] == [
        "no model endpoint is live yet (`cia serve` or the first question starts one)"
    ]
    # served_endpoint made vLLM live; then vLLM died.
    spec = EndpointSpec.from_config(config)
    record = EndpointRecord(version=3, spec=spec, base_url=vllm, started_at=utc_now(), origin="deploy")
    write_json_atomic(DataLayout(config.data_dir).serving / "endpoint.json", record.to_json())
    down = client.get(readiness["path"])
    assert down.status_code == 503
    assert down.json() == {
        "status": "degraded",
        "endpoint": {"engine": "vllm", "model": "Qwen/Qwen2.5-Coder-1.5B-Instruct", "version": 3},
        "problems": [
            f"model server Qwen/Qwen2.5-Coder-1.5B-Instruct (vllm, endpoint v3) at {vllm} does not answer"
        ],
    }
    assert client.get(liveness["path"]).status_code == 200  # the kubelet leaves the app running

    class Models(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = 200 if self.path == "/v1/models" else 404
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps({"object": "list", "data": [{"id": spec.model}]}).encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Models)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        up = client.get(readiness["path"])
        assert up.status_code == 200 and up.json()["status"] == "ok"
    finally:
        server.shutdown()
        server.server_close()
