from __future__ import annotations

import json
from collections.abc import Callable

import dagster as dg

from cia_assets.config import CiaConfig
from cia_assets.defs.repos.partitions import repos_partitions
from cia_assets.defs.repos.sensors import repo_change_sensor
from cia_assets.defs.resources import CiaConfigResource
from cia_assets_tests.support.repos import GitRepo


def tick(instance: dg.DagsterInstance, config: CiaConfig, cursor: str | None) -> dg.SensorResult:
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"cia": CiaConfigResource(config_path=str(config.config_path))},
    )
    result = repo_change_sensor(context)
    assert isinstance(result, dg.SensorResult)
    # Apply what the daemon would: the partitions it asked for exist on the next tick.
    for request in result.dynamic_partitions_requests or []:
        assert isinstance(request, dg.AddDynamicPartitionsRequest)
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def test_new_repos_become_partitions_and_commits_request_runs(
    make_repo: Callable[..., GitRepo], write_config: Callable[..., CiaConfig]
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    payments = make_repo("payments", {"a.py": "x = 1\n"})
    config = write_config([{"url": payments.url}, {"url": "file:///nonexistent/ghost.git"}])

    first = tick(instance, config, None)
    assert [r.partition_keys for r in first.dynamic_partitions_requests or []] == [["payments", "ghost"]]
    sha = payments.git("rev-parse", "HEAD")
    assert [(r.partition_key, r.run_key) for r in first.run_requests or []] == [
        ("payments", f"payments@{sha}")
    ]
    assert first.run_requests[0].tags["cia/commit_sha"] == sha  # type: ignore[index]
    assert json.loads(first.cursor or "") == {"payments": sha}  # the unreachable repo is skipped

    quiet = tick(instance, config, first.cursor)
    assert quiet.run_requests == []
    assert not quiet.dynamic_partitions_requests
    assert quiet.cursor == first.cursor

    new_sha = payments.commit({"b.py": "y = 2\n"})
    billing = make_repo("billing", {"bill.py": "def bill():\n    pass\n"})
    config = write_config(
        [{"url": payments.url}, {"url": "file:///nonexistent/ghost.git"}, {"url": billing.url}]
    )
    changed = tick(instance, config, quiet.cursor)
    assert [r.partition_keys for r in changed.dynamic_partitions_requests or []] == [["billing"]]
    billing_sha = billing.git("rev-parse", "HEAD")
    assert sorted(r.run_key or "" for r in changed.run_requests or []) == sorted(
        [f"payments@{new_sha}", f"billing@{billing_sha}"]
    )
    assert json.loads(changed.cursor or "") == {"payments": new_sha, "billing": billing_sha}
    assert set(instance.get_dynamic_partitions(repos_partitions.name)) == {"payments", "ghost", "billing"}


def test_a_commit_already_snapshotted_is_not_requested_again(
    make_repo: Callable[..., GitRepo], write_config: Callable[..., CiaConfig]
) -> None:
    """`make run` indexes first (`cia index`), then starts the daemon with an empty sensor
    cursor: the first tick must see that the head commit is already indexed."""
    from cia_assets.defs.repos.assets import git_repo_snapshots
    from cia_assets.defs.resources import build_resources

    instance = dg.DagsterInstance.ephemeral()
    payments = make_repo("payments", {"a.py": "x = 1\n"})
    config = write_config([{"url": payments.url}])
    instance.add_dynamic_partitions(repos_partitions.name, ["payments"])
    dg.materialize(
        [git_repo_snapshots],
        instance=instance,
        resources=build_resources(str(config.config_path)),
        partition_key="payments",
    )
    indexed = payments.git("rev-parse", "HEAD")

    first = tick(instance, config, None)
    assert first.run_requests == []
    assert json.loads(first.cursor or "") == {"payments": indexed}

    new_sha = payments.commit({"b.py": "y = 2\n"})
    changed = tick(instance, config, first.cursor)
    assert [r.run_key for r in changed.run_requests or []] == [f"payments@{new_sha}"]
