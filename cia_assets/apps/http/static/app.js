// The chat page: a conversation of questions and answers. Each answer shows its sources at once
// (before the model writes), streams its markdown (server-sent events over fetch), links its
// citations and takes feedback. No framework: the page is small and must work offline.
//
// Safety: model and code text only ever reach the page as text nodes (textContent,
// createTextNode); the markdown renderer builds elements itself and never parses HTML, and
// links get only http(s) URLs.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "cia-token"; // source.js reads it too
const HISTORY_MESSAGES = 6; // what a question sends of the conversation so far
// The newest turn's parts carry these ids (as the one-answer page had them).
const TURN_IDS = ["answer", "citations", "feedback", "up", "down", "comment", "feedback-status"];

let conversation = []; // [{role, content}] of answered questions, oldest first
let turn = null; // the newest turn (see newTurn)
let running = null; // the AbortController of the answer streaming now

// -- token and repos -----------------------------------------------------------------------

// A link like http://127.0.0.1:8600/#token=... (printed by `cia serve`) sets the token once;
// it is then kept in this browser only and removed from the address bar.
(function takeTokenFromUrl() {
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    localStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname);
  }
  $("token").value = localStorage.getItem(TOKEN_KEY) || "";
})();

$("token").addEventListener("change", () => {
  localStorage.setItem(TOKEN_KEY, $("token").value.trim());
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
  let response;
  try {
    response = await fetch("/api/repos", { headers: headers() });
  } catch (error) {
    setStatus("server unreachable");
    return;
  }
  if (!response.ok) {
    setStatus("token refused");
    return;
  }
  setStatus("");
  for (const repo of (await response.json()).repos) {
    select.add(new Option(repo, repo));
  }
}

// -- small DOM helpers ---------------------------------------------------------------------

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

// An http(s) URL (absolute, or relative to this page) as a string, else null: no javascript:,
// data: or other scheme ever becomes a link.
function safeUrl(url) {
  if (typeof url !== "string" || !url) return null;
  try {
    const parsed = new URL(url, location.href);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch (error) {
    return null;
  }
}

function externalLink(href, text, className) {
  const link = element("a", className, text);
  link.href = href;
  link.target = "_blank";
  link.rel = "noopener noreferrer";
  return link;
}

// -- copying -------------------------------------------------------------------------------

async function copyText(text) {
  try {
    if (navigator.clipboard && navigator.clipboard.writeText) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch (error) {
    // not allowed here (no permission, not a secure context): the old way below
  }
  const area = element("textarea", "offscreen");
  area.value = text;
  area.setAttribute("readonly", "");
  document.body.append(area);
  area.select();
  let copied = false;
  try {
    copied = document.execCommand("copy");
  } catch (error) {
    copied = false;
  }
  area.remove();
  return copied;
}

// `button` copies what text() returns (nothing when it returns null), and says for a moment
// whether it did.
function wireCopy(button, text) {
  const label = button.textContent;
  button.addEventListener("click", async () => {
    const value = text();
    if (value === null || value === undefined) return;
    const copied = await copyText(String(value));
    button.textContent = copied ? "Copied" : "Copy failed";
    setTimeout(() => {
      button.textContent = label;
    }, 1500);
  });
  return button;
}

function copyButton(label, ariaLabel, text) {
  const button = element("button", "copy", label);
  button.type = "button";
  button.setAttribute("aria-label", ariaLabel);
  return wireCopy(button, text);
}

// -- markdown ------------------------------------------------------------------------------
// Paragraphs, headings, bullet and numbered lists (nested by indentation), fenced code blocks,
// block quotes, rules; inline `code`, **bold**, *italic*, [text](http-url) and citation
// markers [n]. Anything else stays text.

const FENCE = /^( *)(`{3,}|~{3,})\s*([^\s`]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
const RULE = /^ {0,3}([-*_])(?: *\1){2,} *$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const LIST_ITEM = /^( *)(?:([-*+])|(\d{1,9})[.)])\s+(.*)$/;
const INLINE = new RegExp(
  [
    /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/.source, // 1, 2: `code`
    /\[([^\]\n]+)\]\(\s*([^\s()]+)\s*\)/.source, // 3, 4: [text](url)
    /\[(\d+)\]/.source, // 5: a citation marker
    /\*\*(?=\S)([\s\S]*?\S)\*\*/.source, // 6: **bold**
    /\*(?=[^\s*])([\s\S]*?[^\s*])\*(?!\*)/.source, // 7: *italic*
  ].join("|"),
  "g",
);

// Inline markdown of `text` appended to `parent`; citationUrl(n) is a marker's link or null.
function renderInline(text, parent, citationUrl) {
  let last = 0;
  for (const match of text.matchAll(INLINE)) {
    if (match.index > last) parent.append(document.createTextNode(text.slice(last, match.index)));
    last = match.index + match[0].length;
    const [whole, , code, linkText, linkUrl, marker, bold, italic] = match;
    if (code !== undefined) {
      const trimmed = /^ .*[^ ].* $/s.test(code) ? code.slice(1, -1) : code;
      parent.append(element("code", null, trimmed));
    } else if (linkText !== undefined) {
      const href = /^https?:\/\//i.test(linkUrl) ? safeUrl(linkUrl) : null;
      parent.append(href ? externalLink(href, linkText, "link") : document.createTextNode(whole));
    } else if (marker !== undefined) {
      const href = safeUrl(citationUrl(Number(marker)));
      if (href) {
        const link = externalLink(href, `[${marker}]`, "cite");
        link.title = `source [${marker}]`;
        parent.append(link);
      } else {
        parent.append(document.createTextNode(whole));
      }
    } else {
      const strong = element(bold !== undefined ? "strong" : "em");
      renderInline(bold !== undefined ? bold : italic, strong, citationUrl);
      parent.append(strong);
    }
  }
  if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
}

function codeBlock(code, language) {
  const block = element("div", "code-block");
  const head = element("div", "code-head");
  head.append(element("span", "code-language", language || "code"));
  head.append(copyButton("Copy", "Copy this code", () => code));
  const pre = element("pre");
  const codeElement = element("code", language ? "language-" + language.replace(/[^\w+#.-]/g, "") : null, code);
  pre.append(codeElement);
  block.append(head, pre);
  return block;
}

// The markdown `text` as a DocumentFragment. An unclosed code fence (while the answer streams)
// runs to the end of the text.
function renderMarkdown(text, citationUrl) {
  const out = document.createDocumentFragment();
  const lines = text.replace(/\r\n?/g, "\n").replace(/\t/g, "    ").split("\n");
  const items = []; // list items, their text rendered at the end (before any nested list)
  let paragraph = null; // lines of the open paragraph
  let lists = []; // the open lists, outermost first: {node, ordered, indent}
  let quote = null; // lines of the open block quote

  const inline = (source, parent) => renderInline(source, parent, citationUrl);
  const closeParagraph = () => {
    if (!paragraph) return;
    const p = element("p");
    inline(paragraph.join("\n"), p);
    out.append(p);
    paragraph = null;
  };
  const closeQuote = () => {
    if (!quote) return;
    const block = element("blockquote");
    block.append(renderMarkdown(quote.join("\n"), citationUrl));
    out.append(block);
    quote = null;
  };
  const closeLists = () => {
    lists = [];
  };
  const closeAll = () => {
    closeParagraph();
    closeQuote();
    closeLists();
  };
  const addItem = (indent, ordered, number, content) => {
    while (lists.length && indent < lists[lists.length - 1].indent) lists.pop();
    let top = lists[lists.length - 1];
    if (top && indent <= top.indent + 1 && top.ordered !== ordered) {
      lists.pop(); // the other kind of list at the same depth: a new list
      top = lists[lists.length - 1];
    }
    if (!top || indent > top.indent + 1 || top.ordered !== ordered) {
      const node = element(ordered ? "ol" : "ul");
      if (ordered && number !== 1) node.start = number;
      const parentItem = top && indent > top.indent + 1 ? top.node.lastElementChild : null;
      (parentItem || out).append(node);
      if (!parentItem) lists = [];
      top = { node, ordered, indent };
      lists.push(top);
    }
    const li = element("li");
    top.node.append(li);
    items.push({ li, lines: [content], indent });
  };

  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = line.match(FENCE);
    if (fence) {
      closeAll();
      const [, indent, marker, language] = fence;
      const closing = new RegExp(`^ *${marker[0] === "`" ? "`" : "~"}{${marker.length},}\\s*$`);
      const code = [];
      for (i++; i < lines.length && !closing.test(lines[i]); i++) {
        code.push(lines[i].startsWith(indent) ? lines[i].slice(indent.length) : lines[i].trimStart());
      }
      out.append(codeBlock(code.join("\n"), language));
      continue;
    }
    if (!line.trim()) {
      closeParagraph();
      closeQuote();
      if (lists.length) {
        // A list goes on past a blank line when its next line is an item or indented.
        let next = i + 1;
        while (next < lines.length && !lines[next].trim()) next++;
        const following = lines[next] || "";
        if (!LIST_ITEM.test(following) && !/^ {2,}\S/.test(following)) closeLists();
      }
      continue;
    }
    const heading = line.match(HEADING);
    if (heading) {
      closeAll();
      const node = element("h" + Math.min(heading[1].length + 2, 6)); // the page has h1, h2 above
      inline(heading[2], node);
      out.append(node);
      continue;
    }
    if (RULE.test(line)) {
      closeAll();
      out.append(element("hr"));
      continue;
    }
    const quoted = line.match(QUOTE);
    if (quoted) {
      closeParagraph();
      closeLists();
      (quote = quote || []).push(quoted[1]);
      continue;
    }
    const item = line.match(LIST_ITEM);
    if (item) {
      closeParagraph();
      closeQuote();
      const [, indent, bullet, number, content] = item;
      addItem(indent.length, !bullet, Number(number), content);
      continue;
    }
    if (lists.length && !paragraph) {
      items[items.length - 1].lines.push(line.trim()); // the item's text goes on
      continue;
    }
    closeQuote();
    (paragraph = paragraph || []).push(line);
  }
  closeAll();
  for (const { li, lines: itemLines } of items) {
    const text = document.createDocumentFragment();
    inline(itemLines.join("\n"), text);
    li.prepend(text);
  }
  return out;
}

// The final answer is the explanation, then (unless not found) a "Sources:" list of [n] lines;
// the page shows the sources as cards, so the explanation is rendered without that list.
function explanationOf(answer) {
  const lines = answer.split("\n");
  for (let header = lines.length - 1; header >= 0; header--) {
    if (!/^\s*(\*\*)?Sources:?(\*\*)?\s*$/.test(lines[header])) continue;
    let end = header + 1;
    while (end < lines.length && (!lines[end].trim() || /^\s*\[\d+\]/.test(lines[end]))) end++;
    if (!lines.slice(header + 1, end).some((line) => line.trim())) return answer.trim();
    return [...lines.slice(0, header), ...lines.slice(end)].join("\n").trim();
  }
  return answer.trim();
}

// -- turns ---------------------------------------------------------------------------------

// A new, hidden turn at the bottom of the conversation; it takes the ids from the one before.
function newTurn() {
  for (const id of TURN_IDS) {
    const old = $(id);
    if (old) old.removeAttribute("id");
  }
  const root = $("turn-template").content.firstElementChild.cloneNode(true);
  for (const node of root.querySelectorAll("[data-id]")) node.id = node.dataset.id;
  const part = (selector) => root.querySelector(selector);
  const created = {
    root,
    used: false,
    question: part(".question-text"),
    sourcesBox: part(".sources"),
    cards: part(".source-cards"),
    answer: part("[data-part=answer]"),
    ungrounded: part(".ungrounded"),
    meta: part(".answer-meta"),
    model: part(".model"),
    feedback: part(".feedback"),
    comment: part(".comment"),
    feedbackStatus: part(".feedback-status"),
    votes: [...root.querySelectorAll(".vote")],
    sources: new Map(), // n -> source, as the sources event listed them
    final: null,
  };
  wireCopy(part(".copy-answer"), () => (created.final ? created.final.answer : null));
  for (const vote of created.votes) {
    vote.addEventListener("click", () => sendFeedback(created, vote));
  }
  $("conversation").append(root);
  return created;
}

function lineLabel(source) {
  const lines =
    source.line_end && source.line_end !== source.line_start
      ? `#L${source.line_start}-L${source.line_end}`
      : `#L${source.line_start}`;
  return `${source.repo}:${source.path}${lines}`;
}

function sourceCard(source) {
  const n = Number(source.n);
  const card = element("li", "source-card");
  card.value = n;
  card.dataset.n = String(n);
  const head = element("div", "card-head");
  head.append(element("span", "source-n", `[${n}]`), " ");
  const href = safeUrl(source.url);
  const label = lineLabel(source);
  head.append(href ? externalLink(href, label, "source-link") : element("span", "source-label", label));
  card.append(head);
  if (source.symbol) card.append(element("code", "symbol", source.symbol));
  if (source.preview) {
    const preview = element("div", "preview-block");
    const pre = element("pre", "preview");
    const code = element("code");
    const lines = String(source.preview).replace(/\n$/, "").split("\n");
    lines.forEach((text, index) => {
      const row = element("span", "preview-line");
      const number = element("span", "ln", String((Number(source.line_start) || 1) + index));
      number.setAttribute("aria-hidden", "true");
      row.append(number, element("span", "lc", text), "\n");
      code.append(row);
    });
    pre.append(code);
    preview.append(copyButton("Copy", `Copy the code of source [${n}]`, () => String(source.preview)), pre);
    card.append(preview);
  }
  return card;
}

function showSources(t, sources) {
  t.sources = new Map(sources.map((source) => [Number(source.n), source]));
  t.cards.replaceChildren(...sources.map(sourceCard));
  t.sourcesBox.hidden = sources.length === 0;
  t.answer.dataset.waiting = "writing the answer…";
}

function renderAnswer(t, text, citationUrl) {
  t.answer.replaceChildren(renderMarkdown(text, citationUrl));
}

function showFinal(t, final) {
  t.final = final;
  const citations = Array.isArray(final.citations) ? final.citations : [];
  const cited = new Map(citations.map((citation) => [Number(citation.n), citation]));
  if (!t.cards.children.length && citations.length) showSources(t, citations); // no sources event
  for (const citation of citations) {
    // A citation the sources event did not list still gets its card.
    if (!t.sources.has(Number(citation.n))) {
      t.sources.set(Number(citation.n), citation);
      t.cards.append(sourceCard(citation));
      t.sourcesBox.hidden = false;
    }
  }
  for (const card of t.cards.children) {
    const isCited = cited.has(Number(card.dataset.n));
    card.classList.toggle("cited", isCited);
    card.classList.toggle("dimmed", !isCited);
    const link = card.querySelector(".source-link");
    if (link) link.classList.toggle("citation", isCited);
  }
  const answer = String(final.answer || "");
  renderAnswer(t, explanationOf(answer), (n) => (cited.get(n) || {}).url);
  t.answer.className = final.not_found ? "not-found" : "done";
  t.answer.setAttribute("aria-busy", "false");

  const ungrounded = Array.isArray(final.ungrounded) ? final.ungrounded : [];
  t.ungrounded.replaceChildren();
  if (ungrounded.length) {
    t.ungrounded.append(element("strong", null, "Warning:"), " not found in the cited code, check these names: ");
    ungrounded.forEach((name, index) => {
      if (index) t.ungrounded.append(", ");
      t.ungrounded.append(element("code", null, String(name).replace(/^`+|`+$/g, "")));
    });
  }
  t.ungrounded.hidden = !ungrounded.length;
  t.model.textContent = final.model ? `answered by ${final.model}` : "";
  t.meta.hidden = false;
  t.feedback.hidden = !final.trace_id;
}

function showError(t, message) {
  t.answer.className = "error";
  t.answer.setAttribute("aria-busy", "false");
  t.answer.textContent = "Error: " + message;
  for (const card of t.cards.children) card.classList.add("dimmed");
}

// -- asking --------------------------------------------------------------------------------

async function* serverSentEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const raw = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of raw.split("\n")) {
        const colon = line.indexOf(":");
        if (colon <= 0) continue; // a comment (":") or a line without a field
        const value = line.slice(colon + 1).replace(/^ /, "");
        if (line.startsWith("event:")) event = value;
        else if (line.startsWith("data:")) data.push(value);
      }
      if (data.length || event !== "message") yield { event, data: data.length ? JSON.parse(data.join("\n")) : {} };
    }
  }
}

async function ask(question) {
  const history = conversation.slice(-HISTORY_MESSAGES);
  if (turn.used) turn = newTurn();
  const t = turn;
  t.used = true;
  t.root.hidden = false;
  t.question.textContent = question;
  t.answer.className = "streaming";
  t.answer.setAttribute("aria-busy", "true");
  t.answer.dataset.waiting = "searching the code…";
  $("new-conversation").disabled = false;
  $("ask").disabled = true;
  $("question").value = "";
  t.root.scrollIntoView({ block: "start", behavior: "smooth" });
  setStatus("searching…");
  const repo = $("repo").value;
  const controller = new AbortController();
  running = controller;
  try {
    const response = await fetch("/api/ask", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({ question, repos: repo ? [repo] : null, history }),
      signal: controller.signal,
    });
    if (!response.ok) {
      const error = await response.json().catch(() => ({}));
      throw new Error((error.error && error.error.message) || response.statusText);
    }
    let streamed = "";
    let finished = false;
    for await (const { event, data } of serverSentEvents(response)) {
      if (event === "sources") {
        showSources(t, Array.isArray(data.sources) ? data.sources : []);
      } else if (event === "delta") {
        setStatus("answering…");
        streamed += data.text || "";
        // The whole text again each time: markers, lists and fences close as they stream.
        renderAnswer(t, explanationOf(streamed), (n) => (t.sources.get(n) || {}).url);
      } else if (event === "final") {
        // The verified answer replaces the streamed text: invalid citations are gone, and an
        // answer without a valid one is shown as "not found".
        showFinal(t, data);
        finished = true;
        conversation.push(
          { role: "user", content: question },
          { role: "assistant", content: explanationOf(String(data.answer || "")) },
        );
        setStatus("");
      } else if (event === "error") {
        throw new Error(data.message || "the answer failed");
      }
    }
    if (!finished) throw new Error("the answer stopped before it was complete");
  } catch (error) {
    if (controller.signal.aborted) return; // a new conversation was started
    showError(t, error.message);
    setStatus("");
  } finally {
    if (running === controller) {
      running = null;
      $("ask").disabled = false;
    }
  }
}

$("ask-form").addEventListener("submit", (submit) => {
  submit.preventDefault();
  const question = $("question").value.trim();
  if (question && !running) ask(question);
});

// Ctrl+Enter (Cmd+Enter) in the question asks it.
$("question").addEventListener("keydown", (key) => {
  if (key.key === "Enter" && (key.ctrlKey || key.metaKey)) {
    key.preventDefault();
    $("ask-form").requestSubmit();
  }
});

$("new-conversation").addEventListener("click", () => {
  if (running) running.abort();
  running = null;
  conversation = [];
  $("conversation").replaceChildren();
  turn = newTurn();
  $("ask").disabled = false;
  $("new-conversation").disabled = true;
  setStatus("");
  $("question").focus();
});

// -- feedback ------------------------------------------------------------------------------

async function sendFeedback(t, button) {
  if (!t.final || !t.final.trace_id) return;
  for (const vote of t.votes) vote.disabled = true;
  t.feedbackStatus.textContent = "";
  let response = null;
  try {
    response = await fetch("/api/feedback", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({
        trace_id: t.final.trace_id,
        value: button.dataset.value,
        comment: t.comment.value.trim() || null,
      }),
    });
  } catch (error) {
    response = null;
  }
  if (response && response.ok) {
    button.textContent = "Thanks";
    button.classList.add("chosen");
    t.comment.disabled = true;
    t.feedbackStatus.textContent = "thanks, recorded";
  } else {
    for (const vote of t.votes) vote.disabled = false; // let them try again
    t.feedbackStatus.textContent = "could not record feedback";
  }
}

turn = newTurn();
loadRepos();
