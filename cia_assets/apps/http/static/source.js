// The page a citation opens when its repo has no web UI: /source/<repo>/<sha>/<path>#L10-L42.
// A link cannot carry an Authorization header, so the file comes from /api/source with the
// token the chat page keeps in this browser. File content is only ever set as text.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "cia-token"; // as app.js keeps it

$("token").value = localStorage.getItem(TOKEN_KEY) || "";
$("token").addEventListener("change", () => {
  localStorage.setItem(TOKEN_KEY, $("token").value.trim());
  load();
});
window.addEventListener("hashchange", highlight);

function setStatus(text) {
  $("status").textContent = text;
  $("status").hidden = !text;
}

// "#L10-L42" or "#L10": the cited lines, or null.
function citedLines() {
  const match = location.hash.match(/^#L(\d+)(?:-L(\d+))?$/);
  if (!match) return null;
  const start = Number(match[1]);
  return { start, end: Math.max(start, Number(match[2] || match[1])) };
}

function highlight() {
  const lines = citedLines();
  for (const row of document.querySelectorAll("#code tr.hl")) row.classList.remove("hl");
  if (!lines) return;
  for (let n = lines.start; n <= lines.end; n++) {
    const row = document.getElementById("L" + n);
    if (row) row.classList.add("hl");
  }
  const first = document.getElementById("L" + lines.start);
  if (first) first.scrollIntoView({ block: "center" });
}

function render(file) {
  $("where").textContent = `${file.repo}: ${file.path} at ${file.commit_sha.slice(0, 12)}`;
  document.title = `CIA · ${file.path}`;
  const body = $("code").tBodies[0];
  body.replaceChildren();
  // Lines as citations number them; the newline that ends the file opens no line of its own.
  const lines = file.lines.length > 1 && file.lines.at(-1) === "" ? file.lines.slice(0, -1) : file.lines;
  lines.forEach((text, index) => {
    const n = index + 1;
    const row = document.createElement("tr");
    row.id = "L" + n;
    const number = document.createElement("td");
    number.className = "n";
    const link = document.createElement("a");
    link.href = "#L" + n;
    link.textContent = String(n);
    number.append(link);
    const line = document.createElement("td");
    line.className = "line";
    line.textContent = text;
    row.append(number, line);
    body.append(row);
  });
  $("code").hidden = false;
  highlight();
}

async function load() {
  const token = $("token").value.trim();
  $("code").hidden = true;
  if (!token) {
    setStatus(
      "This page needs your access token. Open the chat app's link with #token=… (`cia serve` " +
        "prints it) once in this browser, or enter the token above.",
    );
    return;
  }
  setStatus("loading…");
  const response = await fetch("/api" + location.pathname, { headers: { Authorization: "Bearer " + token } });
  if (!response.ok) {
    const error = await response.json().catch(() => ({}));
    const message = (error.error && error.error.message) || response.statusText;
    setStatus(response.status === 401 ? "token refused: " + message : message);
    return;
  }
  setStatus("");
  render(await response.json());
}

load();
