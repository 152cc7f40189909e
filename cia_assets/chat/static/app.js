// The chat page: ask, watch the answer stream (server-sent events over fetch), click the
// citations, give feedback. No framework: the page is small and must work offline.
"use strict";

const $ = (id) => document.getElementById(id);
let traceId = null;

// A link like http://127.0.0.1:8600/#token=... (printed by `cia serve`) sets the token once;
// it is then kept in this browser only and removed from the address bar.
(function takeTokenFromUrl() {
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    localStorage.setItem("cia-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname);
  }
  $("token").value = localStorage.getItem("cia-token") || "";
})();

$("token").addEventListener("change", () => {
  localStorage.setItem("cia-token", $("token").value.trim());
  loadRepos();
});

function headers() {
  return { "Content-Type": "application/json", Authorization: "Bearer " + $("token").value.trim() };
}

function setStatus(text) {
  $("status").textContent = text;
}

async function loadRepos() {
  const select = $("repo");
  select.length = 1;
  if (!$("token").value.trim()) return;
  const response = await fetch("/api/repos", { headers: headers() });
  if (!response.ok) {
    setStatus("token refused");
    return;
  }
  setStatus("");
  for (const repo of (await response.json()).repos) {
    select.add(new Option(repo, repo));
  }
}

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// Markers [n] become links to the cited lines; everything else is shown as text.
function renderAnswer(text, citations) {
  const byNumber = new Map(citations.map((c) => [c.n, c]));
  return escapeHtml(text).replace(/\[(\d+)\]/g, (marker, n) => {
    const citation = byNumber.get(Number(n));
    if (!citation || !citation.url) return marker;
    return `<a class="cite" href="${escapeHtml(citation.url)}" target="_blank" rel="noopener">[${n}]</a>`;
  });
}

function showCitations(citations) {
  const list = $("citations");
  list.replaceChildren();
  for (const c of citations) {
    const item = document.createElement("li");
    item.value = c.n;
    const label = `${c.repo}: ${c.path} lines ${c.line_start}–${c.line_end}`;
    if (c.url) {
      const link = document.createElement("a");
      link.href = c.url;
      link.target = "_blank";
      link.rel = "noopener";
      link.textContent = label;
      link.className = "citation";
      item.append(link);
    } else {
      item.textContent = label;
    }
    list.append(item);
  }
}

async function* serverSentEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const raw = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      let data = "";
      for (const line of raw.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      yield { event, data: data ? JSON.parse(data) : null };
    }
  }
}

$("ask-form").addEventListener("submit", async (submit) => {
  submit.preventDefault();
  const question = $("question").value.trim();
  if (!question) return;
  $("ask").disabled = true;
  $("result").hidden = false;
  $("answer").className = "streaming";
  $("answer").textContent = "";
  $("citations").replaceChildren();
  $("feedback-status").textContent = "";
  traceId = null;
  setStatus("searching…");
  const repo = $("repo").value;
  try {
    const response = await fetch("/api/ask", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({ question, repos: repo ? [repo] : null }),
    });
    if (!response.ok) {
      const error = await response.json().catch(() => ({}));
      throw new Error((error.error && error.error.message) || response.statusText);
    }
    let streamed = "";
    for await (const { event, data } of serverSentEvents(response)) {
      if (event === "delta") {
        setStatus("answering…");
        streamed += data.text;
        $("answer").textContent = streamed;
      } else if (event === "final") {
        // The verified answer replaces the streamed text: invalid citations are gone, and
        // an answer without a valid one is shown as "not found".
        traceId = data.trace_id;
        $("answer").innerHTML = renderAnswer(data.answer, data.citations);
        $("answer").className = data.not_found ? "not-found" : "done";
        showCitations(data.citations);
        setStatus(`${data.model}`);
      } else if (event === "error") {
        throw new Error(data.message);
      }
    }
  } catch (error) {
    $("answer").className = "error";
    $("answer").textContent = "Error: " + error.message;
    setStatus("");
  } finally {
    $("ask").disabled = false;
  }
});

async function sendFeedback(value) {
  if (!traceId) return;
  const response = await fetch("/api/feedback", {
    method: "POST",
    headers: headers(),
    body: JSON.stringify({ trace_id: traceId, value, comment: $("comment").value.trim() || null }),
  });
  $("feedback-status").textContent = response.ok ? "thanks, recorded" : "could not record feedback";
}

$("up").addEventListener("click", () => sendFeedback("up"));
$("down").addEventListener("click", () => sendFeedback("down"));
loadRepos();
