"""llama.cpp's OpenAI-compatible server that stops itself after a quiet spell.

`cia ask` (or MCP, or a Dagster run) starts a model server on demand and exits; nobody is
left to stop it, so without this every shell that asked a question would leave ~700 MB
behind. Like a scale-to-zero Deployment: the server counts requests in flight and, once
none has arrived or run for `--idle_stop_s` seconds, shuts down gracefully; the next
question starts it again (`ensure_endpoint`). `cia serve` owns its server and passes 0
(never), stopping it itself; with `--exit_with_parent` (`cia serve`, an evaluation's or a
teacher's server) the server also stops when the process that started it is gone however it
ended (SIGKILL included, when no `finally` runs), like a parent-death signal.

It also reads prompts without computing the logits of every prompt token (below).

Run as `python -m cia_assets.lib.serving.idle_llama_server --idle_stop_s N <llama_cpp.server args>`.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any, cast

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]
CHECK_INTERVAL_S = 1.0
PARENT_GONE_GRACE_S = 10.0


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


def last_token_logits_llama() -> type:
    """`llama_cpp.Llama` that returns log-probabilities (the NOT FOUND odds, the re-ranker)
    while computing logits only for the last token of each decoded batch.

    llama-cpp-python serves `logprobs` only with `logits_all`, which computes and copies the
    logits of every prompt token (152k vocabulary x 4 bytes each, ~0.9 GB for a 1,500-token
    prompt) although a completion's log-probabilities read only the row before each token it
    generates: the prompt's last token, then each generated token, each of which is the last
    token of the batch that decoded it. Computing only those rows reads a prompt 15-25 % faster
    on 2 cores (`bench_prefill.py`), which is most of what the first token waits for.
    A class made on call: importing this module must not load llama.cpp."""
    import llama_cpp
    import numpy as np

    class LastTokenLogitsLlama(llama_cpp.Llama):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "logits_all": False})
            # Lets completions ask for logprobs; `eval` below fills the rows they read. Zeroed
            # lazily by the kernel: only the rows written take memory.
            self._logits_all = True
            self.scores = np.zeros((self._n_ctx, self._n_vocab), dtype=np.single)

        def eval(self, tokens: Sequence[int]) -> None:
            # llama_cpp.Llama.eval, with logits requested for each batch's last token only.
            self._ctx.kv_cache_seq_rm(-1, self.n_tokens, -1)
            for start in range(0, len(tokens), self.n_batch):
                batch = tokens[start : start + self.n_batch]
                n_past = self.n_tokens
                self._batch.set_batch(batch=batch, n_past=n_past, logits_all=False)
                self._ctx.decode(self._batch)
                self.input_ids[n_past : n_past + len(batch)] = batch
                last_row = np.ctypeslib.as_array(self._ctx.get_logits_ith(-1), shape=(self._n_vocab,))
                self.scores[n_past + len(batch) - 1, :] = last_row
                self.n_tokens += len(batch)
                self._requires_eval = False

    return LastTokenLogitsLlama


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
    from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--idle_stop_s", type=float, default=0.0, help="0: never stop")
    parser.add_argument(
        "--exit_with_parent", action="store_true", help="stop when the starting process is gone"
    )
    add_args_from_model(parser, Settings)
    args = parser.parse_args(argv)
    # llama_cpp's own parsing, as its `__main__` does (its annotation says it returns the class).
    server_settings = cast(ServerSettings, parse_model_from_args(ServerSettings, args))
    model_settings = cast(ModelSettings, parse_model_from_args(ModelSettings, args))
    import llama_cpp

    # The server builds its model as `llama_cpp.Llama(...)` (llama_cpp/server/model.py); in this
    # process, which only serves, that is the class computing the last token's logits only.
    llama_cpp.Llama = last_token_logits_llama()  # type: ignore[misc,assignment]
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
    if args.exit_with_parent:
        parent = os.getppid()

        def stop_with_parent() -> None:
            # A process whose parent ended is handed to another (init): its parent id changes.
            while os.getppid() == parent:
                time.sleep(CHECK_INTERVAL_S)
            print(f"the starting process {parent} is gone: stopping", flush=True)
            server.should_exit = True
            time.sleep(PARENT_GONE_GRACE_S)  # a request in flight may finish; nobody waits longer
            os._exit(0)

        threading.Thread(target=stop_with_parent, name="parent-watch", daemon=True).start()
    server.run()


if __name__ == "__main__":
    main()
