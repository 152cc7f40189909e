"""Local networking for tests: free ports, and `cia serve` started as a user starts it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_cia_serve(config_path: Path, port: int, *, timeout_s: float = 90) -> subprocess.Popen[bytes]:
    """`cia serve` in a process of its own, once its /healthz answers 200."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cia_assets.apps.cli", "serve", "--config", str(config_path),
         "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"cia serve did not answer on port {port} (exit code {process.poll()})")
        time.sleep(0.2)


@contextmanager
def running_app(config_path: Path, port: int) -> Iterator[str]:
    """The chat app of `config_path` on a real uvicorn server in this process; its base URL
    once /livez answers."""
    import uvicorn

    from cia_assets.apps.http.app import create_app

    app = create_app(config_path)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/livez", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)
