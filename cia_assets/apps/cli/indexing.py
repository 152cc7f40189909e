"""`cia index` (the indexing graph run in process, one partition per repo, with a per-repo summary)
and `cia search` (hybrid search over the indexed code)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cia_assets.apps.cli.environment import _load, prepare_dagster_home
from cia_assets.config import ConfigError

INDEX_JOB = "index_repo"


def _index(args: argparse.Namespace) -> int:
    config = _load(args)
    if not config.codebases:
        raise ConfigError(
            f"{config.config_path}: codebases: the list is empty, nothing to index "
            "(add an entry such as `- {url: https://github.com/org/repo.git, branch: main}`)"
        )
    repos = list(args.repos) or config.repo_ids
    for repo in repos:
        config.codebase(repo)  # unknown ids fail before anything runs
    prepare_dagster_home(config)

    import dagster as dg

    from cia_assets.definitions import defs
    from cia_assets.defs.repos.partitions import REPOS_PARTITIONS_NAME

    instance = dg.DagsterInstance.get()
    known = set(instance.get_dynamic_partitions(REPOS_PARTITIONS_NAME))
    new = [repo for repo in repos if repo not in known]
    if new:
        instance.add_dynamic_partitions(REPOS_PARTITIONS_NAME, new)
    job = defs().resolve_job_def(INDEX_JOB)
    run_config: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
    if args.full:
        run_config["ops"] = {"qdrant_collection": {"config": {"full_rebuild": True}}}

    summaries: list[dict[str, Any]] = []
    failed = False
    for position, repo in enumerate(repos, start=1):
        print(f"[{position}/{len(repos)}] indexing {repo}", file=sys.stderr, flush=True)
        result = job.execute_in_process(
            partition_key=repo, instance=instance, run_config=run_config, raise_on_error=False
        )
        summary = _summarize_run(repo, result)
        failed = failed or not result.success
        summaries.append(summary)
        print(f"[{position}/{len(repos)}] {repo}: {_describe(summary)}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"repos": summaries}, indent=2))
    return 1 if failed else 0


def _summarize_run(repo: str, result: Any) -> dict[str, Any]:
    metadata: dict[str, dict[str, Any]] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        metadata[materialization.asset_key.to_user_string()] = {
            key: value.value for key, value in materialization.metadata.items()
        }
    snapshot = metadata.get("git_repo_snapshots", {})
    chunks = metadata.get("code_chunks", {})
    embeddings = metadata.get("chunk_embeddings", {})
    collection = metadata.get("qdrant_collection", {})
    summary: dict[str, Any] = {
        "repo": repo,
        "sha": snapshot.get("commit_sha"),
        "files": chunks.get("files"),
        "chunks": chunks.get("chunks"),
        "embedded": embeddings.get("embedded"),
        "reused": embeddings.get("reused"),
        "skipped": chunks.get("skipped", {}),
        "collection": collection.get("collection"),
        "mode": collection.get("mode"),
    }
    if not result.success:
        summary["error"] = _failure_text(result)
    else:
        failed_checks = [
            evaluation.check_name
            for evaluation in (
                e.event_specific_data
                for e in result.all_events
                if e.event_type_value == "ASSET_CHECK_EVALUATION"
            )
            if not evaluation.passed
        ]
        if failed_checks:
            summary["failed_checks"] = failed_checks
    return summary


def _failure_text(result: Any) -> str:
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            error = event.event_specific_data.error
            description = getattr(event.event_specific_data, "user_failure_data", None)
            if description is not None and description.description:
                return str(description.description)
            while error.cause is not None and error.message.startswith("dagster."):
                error = error.cause
            return error.message.strip()
    return "the run failed"


def _describe(summary: dict[str, Any]) -> str:
    if "error" in summary:
        return f"FAILED: {summary['error']}"
    sha = (summary.get("sha") or "")[:12]
    return (
        f"{sha} files={summary['files']} chunks={summary['chunks']} embedded={summary['embedded']} "
        f"reused={summary['reused']} index={summary['mode']}"
    )


def _search(args: argparse.Namespace) -> int:
    config = _load(args)
    from cia_assets.lib.core.project import Project
    from cia_assets.lib.retrieval.search import search_code

    with Project(config) as project:
        hits = search_code(project, args.query, repos=args.repo, k=args.k)
    if args.json:
        print(json.dumps([hit.to_json() for hit in hits], indent=2))
        return 0
    for rank, hit in enumerate(hits, start=1):
        where = hit.url or hit.label
        print(f"{rank:2d}. {hit.score:.4f}  {hit.symbol or hit.kind}  {where}")
    return 0
