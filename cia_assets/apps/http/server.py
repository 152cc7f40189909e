"""`cia serve`: the chat app and, in the embedded default, the model server it needs, as one
supervised command (like a Pod with a sidecar: if the model server dies it is restarted,
and stopping the app stops it)."""

from __future__ import annotations

import logging
import sys
import threading

from cia_assets.config import CiaConfig

log = logging.getLogger(__name__)
SUPERVISE_INTERVAL_S = 5.0


def serve(config: CiaConfig, *, host: str | None = None, port: int | None = None) -> int:
    import uvicorn

    from cia_assets.apps.http.app import create_app
    from cia_assets.lib.core.access import accepted_tokens
    from cia_assets.lib.serving.endpoint import ensure_endpoint, stop_local_endpoint

    host = host or config.chat.host
    port = port or config.chat.port
    record = ensure_endpoint(config, idle_stop_s=0, owned=True)  # this command owns and stops its server
    print(f"cia: model {record.model} answering at {record.base_url} ({record.engine})", file=sys.stderr)
    link = f"http://{host}:{port}/"
    tokens = accepted_tokens(config)
    if len(tokens) == 1:
        link += f"#token={tokens[0].token}"
    if not config.chat.tokens:
        where = config.layout.local_token
        print(f"cia: cia.yaml lists no chat.tokens: the app takes the token in {where}", file=sys.stderr)
    print(f"cia: chat app on {link}", file=sys.stderr, flush=True)

    stop = threading.Event()

    def supervise() -> None:
        # Re-check the live endpoint: a local model server that died (or was replaced by a
        # `served_endpoint` materialization whose server then died) is started again.
        while not stop.wait(SUPERVISE_INTERVAL_S):
            try:
                ensure_endpoint(config, idle_stop_s=0, owned=True)
            except Exception:
                log.exception("the model endpoint is down and could not be restarted")

    supervisor = threading.Thread(target=supervise, name="cia-endpoint-supervisor", daemon=True)
    supervisor.start()
    app = create_app(config.config_path)
    if config.chat.metrics_listen:
        from prometheus_client import start_http_server

        # For a scraper that holds no token: an address the deployment lets only it reach
        # (in deploy/k8s a NetworkPolicy admits the monitoring namespace to this port alone).
        metrics_host, _, metrics_port = config.chat.metrics_listen.rpartition(":")
        registry = app.state.metrics_registry
        start_http_server(int(metrics_port), addr=metrics_host or "0.0.0.0", registry=registry)
        print(f"cia: /metrics without a token on {config.chat.metrics_listen}", file=sys.stderr)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        stop.set()
        if config.llm.engine == "llama_cpp":
            stop_local_endpoint(config)
    return 0
