"""The chat page (cia_assets/apps/http/static) in headless Chromium, against a fake server.

The fake serves the page's files at the paths the chat app serves them (`/`, `/static/...`,
`/source/...`) with a strict Content-Security-Policy, answers `/api/repos` and `/api/feedback`,
and streams `/api/ask` as the app does: `sources`, then `delta`s of markdown, then `final` (or
`error`). The main scenario holds its stream at gates the test opens, so what the page shows
between the events is checked without timing guesses. Every request body is recorded.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

STATIC_DIR = Path(__file__).resolve().parents[2] / "cia_assets" / "apps" / "http" / "static"
CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "page-token-0123456789"
MODEL = "Qwen2.5-Coder-0.5B-Instruct"
SHA = "0123456789abcdef0123456789abcdef01234567"
GIT_URL = f"https://git.example.com/acme/cia/blob/{SHA}/cia_assets/lib/retrieval/search.py#L5-L9"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
GATE_TIMEOUT_S = 20  # a gate the test never opens (it failed before) lets the stream go on

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (CI installs it)",
)

# -- the main scenario's answer -------------------------------------------------------------

CODE = 'def stream(self, request):\n    return "<b>x</b>"'
INJECTED = (
    'Injected <img src=x onerror="window.pwned=1"> and <script>window.pwned=2</script> stay text. '
    "See [the docs](https://example.com/docs), [bad](javascript:window.pwned=3) and [9]."
)
STREAMED = (
    "## How `Answerer.stream` works\n"
    "\n"
    "The **entry point** is `Answerer.stream` [1], which calls *the retriever* [2][3].\n"
    "\n"
    "- it searches the index [2]\n"
    "- it builds the prompt\n"
    "\n"
    "1. retrieve blocks\n"
    "2. generate the answer\n"
    "\n"
    f"```python\n{CODE}\n```\n"
    "\n"
    f"{INJECTED}"
)
# The verified answer drops the marker [3] (no such citation) and, as lib/grounding.py does,
# marks an ungrounded name and notes it in a quote before the Sources list.
EXPLANATION = (
    STREAMED.replace("[2][3]", "[2]").replace(
        "index [2]", "index with `frobnicate_all` (not in the sources) [2]"
    )
    + "\n\n> Not found in the sources shown: `frobnicate_all`. Check these before relying on them."
)
NOT_FOUND = (
    "Not found in the indexed code: no source answering “is it missing?” in cia, docs.\n"
    "The code found does not mention: missing.\n"
    "Searched and read:\n"
    "- cia:cia_assets/lib/answering/answerer.py#L10-L42\n"
    "- cia:cia_assets/lib/retrieval/search.py#L5-L9"
)


def _main_sources(base: str) -> list[dict[str, Any]]:
    return [
        {
            "n": 1,
            "repo": "cia",
            "path": "cia_assets/lib/answering/answerer.py",
            "line_start": 10,
            "line_end": 42,
            "symbol": "Answerer.stream",
            "language": "python",
            "url": f"{base}/source/cia/{SHA}/cia_assets/lib/answering/answerer.py#L10-L42",
            "preview": 'def stream(self, request):\n    """Yield deltas, then the Answer."""\n'
            "    blocks = self.retrieve(request)\n    return '<b>not bold</b><img src=x>'",
        },
        {
            "n": 2,
            "repo": "cia",
            "path": "cia_assets/lib/retrieval/search.py",
            "line_start": 5,
            "line_end": 9,
            "symbol": None,
            "language": "python",
            "url": GIT_URL,
            "preview": "def search(index, query):\n    return index.nearest(query)",
        },
        {
            "n": 3,
            "repo": "docs",
            "path": "README.md",
            "line_start": 1,
            "line_end": 1,
            "symbol": None,
            "language": "markdown",
            "url": None,
            "preview": "# CIA",
        },
    ]


def _answer(explanation: str, citations: list[dict[str, Any]]) -> str:
    listed = "\n".join(f"[{c['n']}] {c['url'] or c['repo'] + ':' + c['path']}" for c in citations)
    return f"{explanation}\n\nSources:\n{listed}"


def _citations(sources: list[dict[str, Any]], numbers: set[int]) -> list[dict[str, Any]]:
    keys = ("n", "repo", "path", "line_start", "line_end", "url")
    return [{key: source[key] for key in keys} for source in sources if source["n"] in numbers]


def quick_explanation(question: str) -> str:
    return f"You asked *{question}*: it is in `handler` [1]."


# -- the fake chat app ----------------------------------------------------------------------


class FakeChat:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.asks: list[dict[str, Any]] = []
        self.feedback: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []
        self.gates: dict[str, threading.Event] = {}
        self.at_gate: dict[str, threading.Event] = {}
        self.traces = 0
        self.base = ""
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.asks.clear()
            self.feedback.clear()
            self.authorizations.clear()
            self.traces = 0
            self.gates = {name: threading.Event() for name in ("deltas", "final")}
            self.at_gate = {name: threading.Event() for name in ("deltas", "final")}

    def open(self, gate: str) -> None:
        self.gates[gate].set()

    def wait_at(self, gate: str) -> None:
        assert self.at_gate[gate].wait(GATE_TIMEOUT_S), f"the stream never reached the {gate} gate"

    def hold(self, gate: str) -> None:
        self.at_gate[gate].set()
        self.gates[gate].wait(GATE_TIMEOUT_S)

    def next_trace(self) -> str:
        with self.lock:
            self.traces += 1
            return f"trace-{self.traces}"

    def script(self, question: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """The events answering `question`: which scenario is told by a word in it."""
        if "gated" in question:
            sources = _main_sources(self.base)
            yield "sources", {"sources": sources}
            self.hold("deltas")
            for start in range(0, len(STREAMED), 9):  # pieces that cut through every construct
                time.sleep(0.01)
                yield "delta", {"text": STREAMED[start : start + 9]}
            self.hold("final")
            citations = _citations(sources, {1, 2})
            yield "final", self._final(_answer(EXPLANATION, citations), citations, ["`frobnicate_all`"])
        elif "missing" in question:
            yield "sources", {"sources": _main_sources(self.base)[:2]}
            yield "delta", {"text": "Something streamed [1] that the check then refused."}
            yield "final", self._final(NOT_FOUND, [], [], True)
        elif "broken" in question:
            yield "sources", {"sources": _main_sources(self.base)[:1]}
            yield "error", {"message": "the model server is down"}
        else:
            sources = _main_sources(self.base)[:1]
            yield "sources", {"sources": sources}
            explanation = quick_explanation(question)
            for start in range(0, len(explanation), 20):
                yield "delta", {"text": explanation[start : start + 20]}
            citations = _citations(sources, {1})
            yield "final", self._final(_answer(explanation, citations), citations, [])

    def _final(
        self, answer: str, citations: list[dict[str, Any]], ungrounded: list[str], not_found: bool = False
    ) -> dict[str, Any]:
        return {
            "answer": answer,
            "citations": citations,
            "model": MODEL,
            "trace_id": self.next_trace(),
            "not_found": not_found,
            "ungrounded": ungrounded,
        }


def _handler(fake: FakeChat) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Security-Policy", CSP)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, value: Any) -> None:
            self._send(status, json.dumps(value).encode(), "application/json")

        def _static(self, name: str) -> None:
            if name not in {p.name for p in STATIC_DIR.iterdir()}:
                self._json(404, {"detail": "Not Found"})
                return
            types = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
            path = STATIC_DIR / name
            self._send(200, path.read_bytes(), types.get(path.suffix, "application/octet-stream"))

        def _authorized(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {TOKEN}":
                return True
            self._json(401, {"error": {"message": "unknown token", "type": "authentication_error"}})
            return False

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/":
                self._static("index.html")
            elif path.startswith("/static/"):
                self._static(path.removeprefix("/static/"))
            elif path.startswith("/source/"):
                self._static("source.html")
            elif path == "/api/repos":
                if self._authorized():
                    self._json(200, {"token": "page", "repos": ["cia", "docs"]})
            else:
                self._json(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
            with fake.lock:
                fake.authorizations.append(self.headers.get("Authorization"))
            if not self._authorized():
                return
            if self.path == "/api/feedback":
                with fake.lock:
                    fake.feedback.append(body)
                self._json(200, {"status": "recorded", "feedback_id": 1, "trace_id": body["trace_id"]})
            elif self.path == "/api/ask":
                with fake.lock:
                    fake.asks.append(body)
                if "denied" in body["question"]:
                    self._json(403, {"error": {"message": "no repo 'secret' for this token"}})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                try:
                    for event, data in fake.script(body["question"]):
                        self.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the page stopped reading (a new conversation)
            else:
                self._json(404, {"detail": "Not Found"})

    return Handler


@pytest.fixture(scope="module")
def server() -> Iterator[FakeChat]:
    fake = FakeChat()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    httpd.daemon_threads = True
    fake.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        for gate in fake.gates.values():
            gate.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            yield launched
        finally:
            launched.close()


# Before the page's own script: CSP violations and what a clipboard fallback copied are kept.
WATCH = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation",
    (e) => window.cspViolations.push(e.violatedDirective + " " + e.blockedURI));
"""

# Records while an answer streams: when the first source card and the first answer text
# appeared, and every text the streaming answer showed.
RECORD_STREAM = """() => {
    window.seen = { texts: new Set(), firstCardAt: null, firstTextAt: null, strongWhileStreaming: false };
    new MutationObserver(() => {
        const answer = document.getElementById("answer");
        if (window.seen.firstCardAt === null && document.querySelector(".turn .source-card"))
            window.seen.firstCardAt = performance.now();
        if (!answer || answer.className !== "streaming") return;
        if (window.seen.firstTextAt === null && answer.textContent)
            window.seen.firstTextAt = performance.now();
        window.seen.texts.add(answer.textContent);
        if (answer.querySelector("strong")) window.seen.strongWhileStreaming = true;
    }).observe(document.getElementById("conversation"),
               { childList: true, characterData: true, subtree: true, attributes: true });
}"""


class Page:
    """One browser page on the fake, with what went wrong in it collected."""

    def __init__(
        self, browser: Any, fake: FakeChat, *, init_script: str = "", clipboard: bool = True
    ) -> None:
        self.fake = fake
        permissions = ["clipboard-read", "clipboard-write"] if clipboard else []
        self.context = browser.new_context(permissions=permissions)
        self.context.add_init_script(WATCH + init_script)
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.goto(f"{fake.base}/#token={TOKEN}")
        wait_until(self.page, "() => document.querySelectorAll('#repo option').length === 3")

    def ask(self, question: str) -> None:
        self.page.fill("#question", question)
        self.page.click("#ask")

    def ask_and_wait(self, question: str, state: str = "done") -> None:
        count = len(self.fake.asks)
        self.ask(question)
        self.page.wait_for_selector(f"#answer.{state}")
        assert len(self.fake.asks) == count + 1

    def copy(self, button: Any) -> str:
        """Click a copy button; what the clipboard then holds."""
        button.click()
        wait_until(self.page, "b => b.textContent === 'Copied'", button.element_handle())
        return str(self.page.evaluate("navigator.clipboard.readText()"))

    def check_clean(self) -> None:
        """No script errors, nothing the CSP refused, nothing fetched from another origin."""
        assert self.errors == []
        assert self.page.evaluate("window.cspViolations") == []
        assert self.page.evaluate("window.pwned") is None
        assert [url for url in self.requests if not url.startswith(self.fake.base + "/")] == []
        self.context.close()


@pytest.fixture
def fake(server: FakeChat) -> Iterator[FakeChat]:
    server.reset()
    yield server
    for gate in server.gates.values():
        gate.set()


def wait_until(page: Any, expression: str, arg: Any = None, timeout_s: float = 15) -> None:
    """Poll a JS function until it returns something truthy. (Playwright's wait_for_function
    evaluates its predicate with eval(), which the page's CSP refuses; page.evaluate does not.)"""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression, arg):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.05)


def _texts(locator: Any) -> list[str]:
    return [text.strip() for text in locator.all_text_contents()]


def test_sources_show_before_the_answer_which_streams_as_safe_markdown(browser: Any, fake: FakeChat) -> None:
    view = Page(browser, fake)
    page = view.page
    sources = _main_sources(fake.base)
    page.select_option("#repo", "cia")
    page.evaluate(RECORD_STREAM)
    view.ask("How does answering stream? gated")

    # Sources come first: their cards are up while the server holds back every delta.
    fake.wait_at("deltas")
    cards = page.locator("#citations > li.source-card")
    cards.nth(2).wait_for(timeout=5000)
    assert page.text_content("#answer") == ""
    assert page.get_attribute("#answer", "class") == "streaming"
    assert cards.count() == 3 and cards.first.is_visible()
    heads = _texts(page.locator("#citations .card-head"))
    assert heads == [
        "[1] cia:cia_assets/lib/answering/answerer.py#L10-L42",
        "[2] cia:cia_assets/lib/retrieval/search.py#L5-L9",
        "[3] docs:README.md#L1",
    ]
    assert _texts(page.locator("#citations .symbol")) == ["Answerer.stream"]
    links = page.locator("#citations a.source-link")
    assert [links.nth(i).get_attribute("href") for i in range(links.count())] == [
        sources[0]["url"],
        GIT_URL,
    ]  # the third source has no url: its label is text
    assert links.first.get_attribute("target") == "_blank"
    first_preview = cards.first.locator(".preview-line")
    assert _texts(first_preview.locator(".ln")) == ["10", "11", "12", "13"]
    assert _texts(first_preview.locator(".lc"))[3] == "return '<b>not bold</b><img src=x>'"
    assert page.locator("#citations b, #citations img").count() == 0

    # The deltas: the markdown is rendered as it streams, markers linked to the sources.
    fake.open("deltas")
    fake.wait_at("final")
    wait_until(page, "() => document.getElementById('answer').textContent.includes('and [9].')")
    assert page.get_attribute("#answer", "class") == "streaming"
    streaming = page.locator("#answer")
    assert streaming.locator("pre code").text_content() == CODE
    assert streaming.locator("a.cite", has_text="[2]").first.get_attribute("href") == GIT_URL
    assert streaming.locator("a.cite", has_text="[3]").count() == 0  # source 3 has no url
    seen = page.evaluate(
        "({...window.seen, texts: window.seen.texts.size})"
    )  # a Set does not come back as JSON
    assert seen["texts"] > 5 and seen["strongWhileStreaming"]  # it streamed, in several pieces
    assert seen["firstCardAt"] is not None and seen["firstTextAt"] is not None
    assert seen["firstCardAt"] < seen["firstTextAt"]

    # The final answer replaces the streamed one.
    fake.open("final")
    page.wait_for_selector("#answer.done")
    answer = page.locator("#answer")
    assert _texts(answer.locator("h4")) == ["How Answerer.stream works"]
    assert _texts(answer.locator("strong")) == ["entry point"]
    assert _texts(answer.locator("em")) == ["the retriever"]
    assert "Answerer.stream" in _texts(answer.locator(":not(pre) > code"))
    assert _texts(answer.locator("ul > li")) == [
        "it searches the index with frobnicate_all (not in the sources) [2]",
        "it builds the prompt",
    ]
    assert _texts(answer.locator("ol > li")) == ["retrieve blocks", "generate the answer"]
    assert answer.locator("pre code").text_content() == CODE
    assert answer.locator("pre code").get_attribute("class") == "language-python"
    cites = answer.locator("a.cite")
    assert [
        (cites.nth(i).text_content(), cites.nth(i).get_attribute("href")) for i in range(cites.count())
    ] == [
        ("[1]", sources[0]["url"]),
        ("[2]", GIT_URL),
        ("[2]", GIT_URL),
    ]
    text = answer.text_content() or ""
    assert "[9]" in text  # no such citation: plain text
    # Markup the model wrote is text: nothing it names was created, nothing ran.
    assert '<img src=x onerror="window.pwned=1">' in text and "<script>window.pwned=2</script>" in text
    assert answer.locator("img, script, b").count() == 0
    assert page.locator("img").count() == 0
    assert "[bad](javascript:window.pwned=3)" in text
    assert [a.get_attribute("href") for a in answer.locator("a.link").all()] == ["https://example.com/docs"]
    assert answer.locator("a[href^='javascript']").count() == 0
    assert _texts(answer.locator("blockquote")) == [
        "Not found in the sources shown: frobnicate_all. Check these before relying on them."
    ]
    # The Sources list is the cards, not text in the answer.
    assert "Sources:" not in text and GIT_URL not in text

    # Cited cards stand out, the others are dimmed; the citation links are marked as such.
    assert [card.get_attribute("class") for card in cards.all()] == [
        "source-card cited",
        "source-card cited",
        "source-card dimmed",
    ]
    assert page.locator("#citations a.citation").count() == 2

    warning = page.locator(".ungrounded")
    assert warning.is_visible() and "Warning" in (warning.text_content() or "")
    assert _texts(warning.locator("code")) == ["frobnicate_all"]
    model = page.locator(".answer-meta .model")
    assert model.is_visible() and model.text_content() == f"answered by {MODEL}"

    # Copying: the whole answer (with its Sources list), a code block, a preview.
    final_answer = _answer(EXPLANATION, _citations(sources, {1, 2}))
    assert view.copy(page.locator(".copy-answer")) == final_answer
    assert view.copy(answer.locator(".code-block button.copy")) == CODE
    assert view.copy(cards.first.locator("button.copy")) == sources[0]["preview"]

    # Feedback: plain-text labels, one vote, then "Thanks".
    up, down = page.locator("#up"), page.locator("#down")
    assert (up.text_content(), down.text_content()) == ("Helpful", "Not helpful")
    for button in (up, down):
        assert button.is_visible() and re.fullmatch(r"[A-Za-z ]+", button.text_content() or "")
        assert len(button.get_attribute("aria-label") or "") > 5
    page.fill("#comment", "clear and cited")
    up.click()
    wait_until(page, "() => document.getElementById('feedback-status').textContent === 'thanks, recorded'")
    assert fake.feedback == [{"trace_id": "trace-1", "value": "up", "comment": "clear and cited"}]
    assert up.text_content() == "Thanks" and up.is_disabled() and down.is_disabled()

    assert fake.asks == [{"question": "How does answering stream? gated", "repos": ["cia"], "history": []}]
    assert set(fake.authorizations) == {f"Bearer {TOKEN}"}
    assert "token=" not in page.url
    view.check_clean()


def test_the_conversation_sends_its_history_and_a_new_conversation_forgets_it(
    browser: Any, fake: FakeChat
) -> None:
    view = Page(browser, fake)
    page = view.page
    questions = [f"question {k}" for k in range(1, 6)]
    for question in questions:
        view.ask_and_wait(question)

    turns = page.locator(".turn:not([hidden])")
    assert _texts(turns.locator(".question-text")) == questions  # in order, the newest last
    for k, question in enumerate(questions):
        answer = turns.nth(k).locator("[data-part=answer]")
        assert answer.get_attribute("class") == "done"
        assert answer.locator("em").text_content() == question
    assert page.locator("#answer").count() == 1  # the ids are the newest turn's
    assert turns.last.locator("#answer").count() == 1

    def exchange(question: str) -> list[dict[str, str]]:
        return [
            {"role": "user", "content": question},
            {"role": "assistant", "content": quick_explanation(question)},  # no Sources list
        ]

    histories = [body["history"] for body in fake.asks]
    assert histories[0] == []
    assert histories[1] == exchange("question 1")
    assert histories[2] == exchange("question 1") + exchange("question 2")
    assert histories[3] == exchange("question 1") + exchange("question 2") + exchange("question 3")
    assert histories[4] == exchange("question 2") + exchange("question 3") + exchange("question 4")
    assert all(body["repos"] is None for body in fake.asks)

    # An older answer keeps its own feedback buttons.
    turns.first.locator(".vote[data-value=down]").click()
    wait_until(
        page, "() => document.querySelector('.turn .feedback-status').textContent === 'thanks, recorded'"
    )
    assert fake.feedback == [{"trace_id": "trace-1", "value": "down", "comment": None}]

    page.click("#new-conversation")
    assert page.locator(".turn:not([hidden])").count() == 0
    assert page.is_disabled("#new-conversation")
    view.ask_and_wait("a fresh start")
    assert fake.asks[-1]["history"] == []
    assert _texts(page.locator(".turn:not([hidden]) .question-text")) == ["a fresh start"]
    view.ask_and_wait("and again")
    assert fake.asks[-1]["history"] == exchange("a fresh start")
    view.check_clean()


def test_not_found_and_failed_answers_are_shown_as_such_and_left_out_of_the_history(
    browser: Any, fake: FakeChat
) -> None:
    view = Page(browser, fake)
    page = view.page
    view.ask_and_wait("is it missing?", "not-found")
    answer = page.locator("#answer")
    assert _texts(answer.locator("p")) == [NOT_FOUND.split("\n- ")[0]]
    assert _texts(answer.locator("ul > li")) == [
        "cia:cia_assets/lib/answering/answerer.py#L10-L42",
        "cia:cia_assets/lib/retrieval/search.py#L5-L9",
    ]
    assert "Something streamed" not in (answer.text_content() or "")
    cards = page.locator("#citations > li")
    assert [card.get_attribute("class") for card in cards.all()] == ["source-card dimmed"] * 2
    assert page.locator(".ungrounded").is_hidden()
    assert page.text_content(".answer-meta .model") == f"answered by {MODEL}"

    view.ask_and_wait("is it broken?", "error")
    assert page.text_content("#answer") == "Error: the model server is down"
    assert page.locator("#feedback").is_hidden()  # no trace to give feedback on
    view.ask_and_wait("denied repo?", "error")
    assert page.text_content("#answer") == "Error: no repo 'secret' for this token"
    assert not page.is_disabled("#ask")

    view.ask_and_wait("what now?")
    not_found = [
        {"role": "user", "content": "is it missing?"},
        {"role": "assistant", "content": NOT_FOUND},
    ]
    assert [body["history"] for body in fake.asks] == [[], not_found, not_found, not_found]
    view.check_clean()


def test_copy_falls_back_to_a_hidden_textarea_when_the_clipboard_api_refuses(
    browser: Any, fake: FakeChat
) -> None:
    refuse = """
    navigator.clipboard.writeText = () => Promise.reject(new DOMException("denied", "NotAllowedError"));
    const execCommand = document.execCommand.bind(document);
    window.copiedByExecCommand = [];
    document.execCommand = (command, ...rest) => {
        if (command === "copy") {
            const helper = [...document.querySelectorAll("textarea")].find((t) => t.id !== "question");
            window.copiedByExecCommand.push(helper ? helper.value : null);
            return true;
        }
        return execCommand(command, ...rest);
    };
    """
    view = Page(browser, fake, init_script=refuse, clipboard=False)
    page = view.page
    view.ask_and_wait("how to copy?")
    page.click(".copy-answer")
    wait_until(page, "() => document.querySelector('.copy-answer').textContent === 'Copied'")
    expected = _answer(quick_explanation("how to copy?"), _citations(_main_sources(fake.base), {1}))
    assert page.evaluate("window.copiedByExecCommand") == [expected]
    assert page.locator("textarea").count() == 1  # the helper is gone again: only the question's
    view.check_clean()


def test_the_page_builds_its_markup_itself_and_loads_nothing_inline_or_from_elsewhere() -> None:
    script = (STATIC_DIR / "app.js").read_text()
    for unsafe in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert unsafe not in script, unsafe
    page = (STATIC_DIR / "index.html").read_text()
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/static/app.js">']
    assert re.findall(r"(?:src|href)=\"([^\"]+)\"", page) == ["/static/app.css", "/static/app.js"]
    assert re.search(r"\s(?:style|on[a-z]+)=", page) is None  # no inline styles or handlers
