"""`cia ask`, `cia serve`, `cia mcp` and `cia dev` (the Dagster UI and daemon beside the chat app,
under a small process supervisor), with the grant the CLI answers as and the dev workspace."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from cia_assets.apps.cli.environment import _load, prepare_dagster_home
from cia_assets.config import CiaConfig

MCP_HELP = """\
Run the MCP server on stdio (tools: search_code, ask_codebase), started by an MCP client.

The client's token comes from $CIA_TOKEN in the server's environment (the `env` of its entry
in the client's configuration) and must be one of chat.tokens in cia.yaml; it decides the
repos both tools see. E.g. Claude Desktop's or Cursor's config:

  {"mcpServers": {"cia": {"command": "/path/to/checkout/.venv/bin/cia",
                          "args": ["mcp", "--config", "/path/to/checkout/cia.yaml"],
                          "env": {"CIA_TOKEN": "<a token from chat.tokens>"}}}}
"""


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


def cli_grant(config: CiaConfig, token: str | None) -> Any:
    """The CLI runs as the owner of the data dir (every repo), or, with `token`, as that
    chat.tokens entry. $CIA_TOKEN is not read here: it is an MCP client's credential."""
    from cia_assets.lib.core.access import authorize, owner_grant

    return owner_grant(config) if token is None else authorize(config, token)


def _ask(args: argparse.Namespace) -> int:
    config = _load(args)
    from cia_assets.lib.answering.answer import Answer, AnswerDelta, AnswerSources, AskRequest, closing_text
    from cia_assets.lib.answering.service import AssistantService

    grant = cli_grant(config, args.token)
    service = AssistantService(config)
    if service.trace_problem:
        # The answer still comes; the user learns why it cannot be rated or found later.
        print(f"cia: answers are not being recorded: {service.trace_problem}", file=sys.stderr, flush=True)
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
