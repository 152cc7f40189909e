"""llama.cpp's OpenAI-compatible server that stops itself after a quiet spell.

`cia ask` (or MCP, or a Dagster run) starts a model server on demand and exits; nobody is
left to stop it, so without this every shell that asked a question would leave ~700 MB
behind. Like a scale-to-zero Deployment: the server counts requests in flight and, once
none has arrived or run for `--idle_stop_s` seconds, shuts down gracefully; the next
question starts it again (`ensure_endpoint`). `cia serve` owns its server and passes 0
(never), stopping it itself.

Run as `python -m cia_assets.lib.serving.idle_llama_server --idle_stop_s N <llama_cpp.server args>`.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any, cast

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]
CHECK_INTERVAL_S = 1.0


class IdleTracker:
    """ASGI wrapper that knows when the last HTTP request ended and how many still run
    (a streamed answer counts until its last chunk is sent)."""

    def __init__(self, app: AsgiApp) -> None:
        self.app = app
        self.active = 0
        self.last_activity = time.monotonic()
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with self._lock:
            self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            with self._lock:
                self.active -= 1
                self.last_activity = time.monotonic()

    def idle_for(self) -> float:
        with self._lock:
            return 0.0 if self.active else time.monotonic() - self.last_activity


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
    from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--idle_stop_s", type=float, default=0.0, help="0: never stop")
    add_args_from_model(parser, Settings)
    args = parser.parse_args(argv)
    # llama_cpp's own parsing, as its `__main__` does (its annotation says it returns the class).
    server_settings = cast(ServerSettings, parse_model_from_args(ServerSettings, args))
    model_settings = cast(ModelSettings, parse_model_from_args(ModelSettings, args))
    app = create_app(server_settings=server_settings, model_settings=[model_settings])
    tracker = IdleTracker(app)
    server = uvicorn.Server(uvicorn.Config(tracker, host=server_settings.host, port=server_settings.port))
    if args.idle_stop_s > 0:

        def stop_when_idle() -> None:
            while not server.should_exit:
                time.sleep(CHECK_INTERVAL_S)
                if tracker.idle_for() >= args.idle_stop_s:
                    print(f"no request for {args.idle_stop_s:.0f} s: stopping", flush=True)
                    server.should_exit = True  # uvicorn's own graceful shutdown

        threading.Thread(target=stop_when_idle, name="idle-stop", daemon=True).start()
    server.run()


if __name__ == "__main__":
    main()
