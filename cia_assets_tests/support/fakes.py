"""Local HTTP stand-ins for systems that cannot run here, speaking their real protocol to the
real client libraries: an OpenAI-compatible endpoint (a hosted teacher or judge API), a
deterministic judge for ragas' prompts and a deterministic teacher for the synthetic Q&A."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = Callable[[dict[str, Any]], str]
"""The request's JSON body -> the assistant message's text."""


@dataclass
class FakeOpenAI:
    """`/v1/models` and `/v1/chat/completions` (streamed too); every request body is kept."""

    reply: Reply
    model: str = "teacher-large"
    requests: list[dict[str, Any]] = field(default_factory=list)
    raw_bodies: list[bytes] = field(default_factory=list)
    adapters: list[dict[str, Any]] = field(default_factory=list)  # vLLM load_lora_adapter calls
    base_url: str = ""
    # Streams whose client went away before their end (a write to it failed).
    abandoned_streams: int = 0

    @property
    def off_machine_url(self) -> str:
        """This server's base URL as CIA reads one off this machine: 0.0.0.0 is neither
        `localhost` nor a loopback address, so requests to it pass the egress redaction; Linux
        delivers them here, so the server itself stays on 127.0.0.1."""
        return self.base_url.replace("//127.0.0.1:", "//0.0.0.0:", 1)

    def received_text(self) -> str:
        """Everything that reached this server, as one string (to search for leaks)."""
        return "\n".join(body.decode("utf-8", "replace") for body in self.raw_bodies)


@contextmanager
def fake_openai(
    reply: Reply,
    model: str = "teacher-large",
    *,
    refuse_logprobs: bool = False,
    cut_streams: bool = False,
    drip_s: float = 0.0,
) -> Iterator[FakeOpenAI]:
    """With `refuse_logprobs`, a request for log-probabilities gets HTTP 400, as from an API
    that does not offer them; with `cut_streams`, a streamed reply ends after its first piece
    with no finish_reason, as llama-cpp-python's server ends one for the next request; with
    `drip_s`, a streamed reply comes a word every `drip_s` seconds, as a model generates it, and
    stops when its client goes away (counted in `abandoned_streams`)."""
    fake = FakeOpenAI(reply=reply, model=model)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _stream(self, request: dict[str, Any], text: str) -> None:
            """OpenAI's server-sent chunks: the text in two deltas (a word each with `drip_s`),
            an empty one with the finish_reason, then [DONE]."""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            half = len(text) // 2
            parts = re.findall(r"\S+\s*", text) if drip_s else [text[:half], text[half:]]
            pieces: list[tuple[str, str | None]] = [*((part, None) for part in parts), ("", "stop")]
            try:
                self._write_chunks(request, text, pieces[:1] if cut_streams else pieces)
            except (BrokenPipeError, ConnectionResetError):
                fake.abandoned_streams += 1

        def _write_chunks(
            self, request: dict[str, Any], text: str, pieces: list[tuple[str, str | None]]
        ) -> None:
            for n, (piece, finish_reason) in enumerate(pieces):
                choice: dict[str, Any] = {
                    "index": 0,
                    "delta": {"content": piece},
                    "finish_reason": finish_reason,
                }
                if n == 0 and request.get("logprobs"):
                    choice["logprobs"] = first_token_logprobs(text)
                chunk = {
                    "id": f"chatcmpl-{len(fake.requests)}",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": request.get("model", fake.model),
                    "choices": [choice],
                }
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                if drip_s:
                    self.wfile.flush()
                    time.sleep(drip_s)
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

        def do_GET(self) -> None:
            if self.path.rstrip("/").endswith("/models"):
                self._send(200, {"object": "list", "data": [{"id": fake.model, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            fake.raw_bodies.append(raw)
            if self.path.endswith("/load_lora_adapter"):  # vLLM's runtime LoRA loading
                fake.adapters.append(json.loads(raw))
                body = b"Success: LoRA adapter loaded"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if not self.path.endswith("/chat/completions"):
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            request = json.loads(raw)
            fake.requests.append(request)
            if refuse_logprobs and request.get("logprobs"):
                self._send(
                    400, {"error": {"message": "logprobs are not supported", "type": "invalid_request"}}
                )
                return
            text = fake.reply(request)
            if request.get("stream"):
                self._stream(request, text)
                return
            choice: dict[str, Any] = {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": text},
            }
            if request.get("logprobs"):
                choice["logprobs"] = first_token_logprobs(text)
            self._send(
                200,
                {
                    "id": f"chatcmpl-{len(fake.requests)}",
                    "object": "chat.completion",
                    "created": 0,
                    "model": request.get("model", fake.model),
                    "choices": [choice],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
                },
            )

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


def first_token_logprobs(text: str) -> dict[str, Any]:
    """OpenAI's `logprobs` for a reply: its first word at probability 0.9, and "no" or "yes"
    (whichever it is not) at 0.1, as a judge that is fairly sure would answer."""
    first = (text.split() or [""])[0]
    other = "no" if first.lower() == "yes" else "yes"
    candidates = [
        {"token": first, "logprob": math.log(0.9), "bytes": None},
        {"token": other, "logprob": math.log(0.1), "bytes": None},
    ]
    return {"content": [{**candidates[0], "top_logprobs": candidates}], "refusal": None}


def source_of(request: dict[str, Any]) -> str:
    """The user message of a teacher request (the redacted source block)."""
    return next(m["content"] for m in request["messages"] if m["role"] == "user")


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z_][a-z0-9_]+", text.lower()) if len(w) >= 4}


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]


def supported(statement: str, context: str) -> bool:
    """The fake judge's rule: at least half the statement's words (4+ letters) are in the context."""
    words = _words(statement)
    return bool(words) and len(words & _words(context)) * 2 >= len(words)


def ragas_judge_reply(request: dict[str, Any]) -> str:
    """A deterministic LLM judge for ragas' prompts (JSON mode): it reads the prompt's last
    `input: {...}` block and answers with the output schema the prompt asks for."""
    prompt = request["messages"][-1]["content"]
    data = json.loads(prompt[prompt.rindex("input: {") + len("input: ") : prompt.rindex("Output:")].strip())
    if set(data) == {"question", "answer"}:  # faithfulness: split the answer into statements
        return json.dumps({"statements": _sentences(data["answer"])})
    if "statements" in data:  # faithfulness: a verdict per statement
        return json.dumps(
            {
                "statements": [
                    {"statement": s, "reason": "word overlap", "verdict": int(supported(s, data["context"]))}
                    for s in data["statements"]
                ]
            }
        )
    if set(data) == {"response"}:  # answer relevancy: the question the response answers
        return json.dumps({"question": _sentences(data["response"])[0], "noncommittal": 0})
    if "attributed" in prompt:  # context recall: each reference sentence attributed or not
        return json.dumps(
            {
                "classifications": [
                    {
                        "statement": s,
                        "reason": "word overlap",
                        "attributed": int(supported(s, data["context"])),
                    }
                    for s in _sentences(data["answer"])
                ]
            }
        )
    # context precision: was this context useful for the reference answer?
    return json.dumps({"reason": "word overlap", "verdict": int(supported(data["answer"], data["context"]))})


def teacher_reply(request: dict[str, Any]) -> str:
    """A deterministic teacher: a question about the source's symbol (or file) and an answer
    citing it; Go sources get an uncited answer and README sections prose, to be dropped."""
    source = source_of(request)
    header = re.search(r"\[1\] (\S+) lines (\d+)-(\d+)(?: \(([^)]*)\))?", source)
    assert header, source
    path, symbol = header.group(1), header.group(4) or header.group(1)
    if path.endswith(".go"):
        return json.dumps({"question": f"What does {symbol} do?", "answer": f"{symbol} moves money."})
    if path.endswith(".md"):
        return "Sure! Here is a question about the readme."
    # The answer quotes the source's longest line, so what it says is in the source: an
    # honest answer the stand-in judge finds faithful (a formula sentence would score 0 there).
    code = re.search(r"^```+\w*\n(.*?)\n```", source, re.S | re.M)
    body = [line.strip() for line in (code.group(1) if code else "").splitlines()[1:] if line.strip()]
    quoted = max(body, key=len, default=symbol).replace("`", "'")
    return json.dumps(
        {
            "question": f"What does {symbol} in {path} do?",
            "answer": f"According to [1], `{symbol}` in `{path}` runs `{quoted}`.",
        }
    )
