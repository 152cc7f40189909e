"""Secrets are redacted from code before it leaves this machine (see `serving.egress`, the one
choke point every request to a non-local model endpoint passes), and from the examples the
learning loop stores.

Two detectors, like a DLP filter at an egress proxy:
- detect-secrets (Yelp's scanner) with its default plugins finds known formats (cloud keys,
  tokens of GitHub, Slack, Stripe, JWTs, private keys, basic-auth URLs) and secret keywords.
  Its keyword plugin reads a file by its type: quoted values in code (`password = "..."`),
  bare ones in config (`password: hunter2` in YAML, `DB_PASSWORD=...` in a .env file), so the
  file name is passed when it is known. detect-secrets has no type for .env files: they are
  scanned as config. In text that is not a program's source (unknown origin, shell scripts,
  Dockerfiles, docs), lines shaped like a config entry (`key: value`, `export KEY=value`, one
  bare value) are also scanned as config; in source code such a value is a name
  (`password: str`, `token = new_token`), not a secret;
- a Shannon-entropy scan over every token of 20+ characters catches the keys no plugin knows
  (detect-secrets' own entropy plugins report every quoted word when run line by line, with no
  threshold applied, so the limits are applied here).
Lines keep their numbers, so citations to a redacted chunk still point at the right lines.
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from cia_assets.lib.answering.citations import SOURCE_BLOCK

PLACEHOLDER = "<REDACTED>"
# detect-secrets keeps its settings, plugins and filters in process-global state that
# `default_settings()` swaps in and out and its caches rebuild: two threads scanning at once
# (the chat server's requests, searches during a re-index) broke each other's scans
# ("dictionary changed size during iteration", KeyError on a plugin name). Scans take turns.
_DETECT_SECRETS_SETTINGS = threading.Lock()
MIN_ENTROPY_TOKEN = 20
# "=" only as base64 padding: `name=VALUE` in code is two tokens, not one long one.
_TOKEN = re.compile(r"[A-Za-z0-9+/_\-.~]{" + str(MIN_ENTROPY_TOKEN) + ",}={0,2}")
_HEX = re.compile(r"^[0-9a-fA-F]+$")
_SECRET_CHARS = re.compile(r"[A-Za-z0-9_\-+/=.~]")
# A private key's armour lines. A key runs from its BEGIN line to the END line that follows
# before any other BEGIN. Without one (a chunk cut inside the key, a test that writes only the
# header) it runs through the lines that look like its body (`_pem_body_line`), not to the end
# of the text: code after a header-only literal is no secret, and masking it blanked whole
# test functions. One pass over the armour lines, then line by line: linear in the text.
_PEM_ARMOUR = re.compile(r"-----(?P<edge>BEGIN|END) [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----")
# A body line once the string around it is gone: indentation, quotes, the `+` / `,` / brackets
# of a literal split over lines, `\n` escapes and `;` at its end. Base64 has no spaces and `=`
# only as padding, so `after = 1` is code.
_PEM_LINE_OPENING = re.compile(r"^[\s+,(\[]*[\"'`]?")
_PEM_LINE_CLOSING = re.compile(r"(\\[nr])*[\"'`]?[\s,;)\]+]*$")
_PEM_BODY = re.compile(r"[A-Za-z0-9+/]+={0,2}|(Proc-Type|DEK-Info|Version|Comment|Hash):[^\n]*")


def _pem_body_line(line: str) -> bool:
    if not line.strip():
        return True
    bare = _PEM_LINE_CLOSING.sub("", _PEM_LINE_OPENING.sub("", line, count=1), count=1)
    return bool(_PEM_BODY.fullmatch(bare))


def _private_key_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each private key in `text`."""
    armour = list(_PEM_ARMOUR.finditer(text))
    spans: list[tuple[int, int]] = []
    for index, begin in enumerate(armour):
        if begin["edge"] != "BEGIN":
            continue
        following = armour[index + 1] if index + 1 < len(armour) else None
        if following is not None and following["edge"] == "END":
            spans.append((begin.start(), following.end()))
            continue
        end = text.find("\n", begin.end())
        end = len(text) if end < 0 else end
        while end < len(text):
            line_end = text.find("\n", end + 1)
            line_end = len(text) if line_end < 0 else line_end
            if not _pem_body_line(text[end + 1 : line_end]):
                break
            end = line_end
        spans.append((begin.start(), end))
    return spans


# Entropy findings of detect-secrets are replaced by the scan below (see the module docstring).
_ENTROPY_TYPES = {"Base64 High Entropy String", "Hex High Entropy String"}
# detect-secrets reads bare `key: value` / `KEY=value` secrets in the files it types as config
# (by extension); this name gets that reading.
_AS_CONFIG = "cia-redaction.yaml"
_CONFIG_SUFFIXES = {".yaml", ".yml", ".cfg", ".ini", ".conf", ".properties", ".toml", ".env"}
_UNKNOWN = "adhoc-string-scan"  # detect-secrets' own name for text of no file
# A config entry with one bare value: `password: hunter2`, `export DB_PASSWORD=s3cret`,
# a Dockerfile's `ENV DB_PASSWORD=s3cret`.
# What every detector needs on a line to find anything there: a long token (known formats and
# entropy), a secret's keyword (the keyword plugin's values may be short), or a URL's user
# info. Lines without any are not scanned: most code, at a fraction of the cost.
_MAY_HOLD_SECRET = re.compile(
    _TOKEN.pattern + r"|(?i:pass|pwd|secret|token|key|auth|credential|private|contrase)|://[^/\s]*@"
)
_CONFIG_LINE = re.compile(r"^\s*(export\s+|ENV\s+|ARG\s+)?[A-Za-z_][\w.-]*\s*[:=]\s*[^\s'\"(\[{][^\s(]*\s*$")


# Source files whose bare `key = value` values are names, not secrets: their secrets are quoted.
_PROGRAM_SUFFIXES = {
    ".py", ".pyi", ".js", ".jsx", ".mjs", ".cjs", ".ts", ".tsx", ".go", ".java", ".kt", ".kts",
    ".scala", ".rs", ".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".cs", ".rb", ".php",
    ".swift", ".m", ".mm", ".lua", ".dart", ".ex", ".exs", ".erl", ".hs", ".ml", ".clj", ".r", ".jl",
}  # fmt: skip


def _is_program(filename: str | None) -> bool:
    return filename is not None and PurePosixPath(filename).suffix.lower() in _PROGRAM_SUFFIXES


def scan_name(filename: str | None) -> str:
    """The name detect-secrets scans a file's lines under (see the module docstring)."""
    if filename is None:
        return _UNKNOWN
    name = PurePosixPath(filename).name.lower()
    if name.startswith(".env") or PurePosixPath(name).suffix in _CONFIG_SUFFIXES:
        return _AS_CONFIG
    return filename


@dataclass(frozen=True)
class Finding:
    line: int  # 1-based, within the text
    kind: str


@dataclass(frozen=True)
class Redacted:
    text: str
    findings: tuple[Finding, ...]
    # The single-line values replaced, so text that repeats one where no detector would see it
    # (an answer saying "the password is hunter2") can be cleaned too (`scrub`).
    values: frozenset[str] = frozenset()

    @property
    def count(self) -> int:
        return len(self.findings)


def shannon_entropy(value: str) -> float:
    """Bits per character of `value`."""
    if not value:
        return 0.0
    counts = Counter(value)
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


def _expand(line: str, start: int, end: int) -> tuple[int, int]:
    """Widen a match to the whole token around it (a plugin may report only a key's prefix)."""
    while start > 0 and _SECRET_CHARS.match(line[start - 1]):
        start -= 1
    while end < len(line) and _SECRET_CHARS.match(line[end]):
        end += 1
    return start, end


def _known_format_spans(line: str, filename: str) -> list[tuple[int, int, str]]:
    """Call within detect-secrets' `default_settings()` (entered once per text: it is costly).
    What `detect_secrets.core.scan.scan_line` does, with a file name: its public function
    scans every line as a file of no type, which misses the bare values of config files."""
    from detect_secrets.core.scan import _is_filtered_out, _scan_line
    from detect_secrets.settings import get_plugins
    from detect_secrets.util.code_snippet import get_code_snippet

    context = get_code_snippet(lines=[line], line_number=1)
    found = [
        secret
        for plugin in get_plugins()
        for secret in _scan_line(
            plugin=plugin,
            filename=filename,
            line=line,
            line_number=0,
            enable_eager_search=True,
            context=context,
        )
        if not _is_filtered_out(
            required_filter_parameters=["context"],
            filename=secret.filename,
            secret=secret.secret_value,
            plugin=plugin,
            line=line,
            context=context,
        )
    ]
    spans = []
    for secret in found:
        if secret.type in _ENTROPY_TYPES or not secret.secret_value:
            continue
        position = line.find(secret.secret_value)
        if position < 0:
            continue
        start, end = position, position + len(secret.secret_value)
        if secret.type != "Secret Keyword":  # a keyword's value is whole; `KEY=` stays readable
            start, end = _expand(line, start, end)
        spans.append((start, end, secret.type))
    return spans


def _entropy_spans(line: str, base64_limit: float, hex_limit: float) -> list[tuple[int, int, str]]:
    spans = []
    for match in _TOKEN.finditer(line):
        token = match.group().strip(".-")
        if len(token) < MIN_ENTROPY_TOKEN:
            continue
        is_hex = bool(_HEX.match(token))
        limit = hex_limit if is_hex else base64_limit
        if shannon_entropy(token) >= limit:
            spans.append((match.start(), match.end(), "High Entropy String"))
    return spans


def redact(
    text: str, *, filename: str | None = None, base64_limit: float = 4.5, hex_limit: float = 3.0
) -> Redacted:
    """`text` (the lines of `filename`, when known) with every detected secret replaced by
    <REDACTED>, and what was found where."""
    from detect_secrets.settings import default_settings, get_filters, get_settings

    findings: list[Finding] = []
    values: set[str] = set()

    pieces: list[str] = []
    done, key_line = 0, 1
    for start, end in _private_key_spans(text):
        key_line += text.count("\n", done, start)
        findings.append(Finding(line=key_line, kind="Private Key"))
        # Keep the line count so later line numbers do not move.
        newlines = text.count("\n", start, end)
        pieces += [text[done:start], PLACEHOLDER, "\n" * newlines]
        key_line += newlines
        done = end
    text = "".join([*pieces, text[done:]])
    lines = text.split("\n")
    name = scan_name(filename)
    program = _is_program(filename)
    with _DETECT_SECRETS_SETTINGS, default_settings():
        # As scan_line does: lines are not read from a file, so no file can be invalid.
        get_settings().disable_filters("detect_secrets.filters.common.is_invalid_file")
        get_filters.cache_clear()
        for number, line in enumerate(lines, start=1):
            if not line.strip() or line.strip() == PLACEHOLDER or not _MAY_HOLD_SECRET.search(line):
                continue
            spans = _known_format_spans(line, name) + _entropy_spans(line, base64_limit, hex_limit)
            if name != _AS_CONFIG and not program and _CONFIG_LINE.match(line):
                spans += _known_format_spans(line, _AS_CONFIG)
            if not spans:
                continue
            lines[number - 1] = _replace(line, spans)
            findings.extend(Finding(line=number, kind=kind) for kind in _distinct_kinds(spans))
            values.update(line[start:end] for start, end, _ in spans)
    return Redacted(text="\n".join(lines), findings=tuple(findings), values=frozenset(values))


def mask_secrets(text: str, path: str) -> str:
    """`text`, lines of the file at `path`, as it may be shown to a person (`retrieval.mask_secrets`):
    every detected secret replaced by <REDACTED>, the lines kept."""
    return redact(text, filename=path).text


# Shorter values are too likely to be ordinary words to be replaced wherever they occur.
MIN_SCRUBBED_VALUE = 6


def scrub(text: str, values: Iterable[str]) -> tuple[str, int]:
    """`text` with every occurrence of the given secret values replaced; how many were."""
    count = 0
    for value in sorted((v for v in set(values) if len(v) >= MIN_SCRUBBED_VALUE), key=len, reverse=True):
        if value in text:
            count += text.count(value)
            text = text.replace(value, PLACEHOLDER)
    return text, count


def _distinct_kinds(spans: Iterable[tuple[int, int, str]]) -> list[str]:
    return sorted({kind for _, _, kind in spans})


def _replace(line: str, spans: list[tuple[int, int, str]]) -> str:
    merged: list[list[int]] = []
    for start, end, _ in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, position = [], 0
    for start, end in merged:
        out += [line[position:start], PLACEHOLDER]
        position = end
    out.append(line[position:])
    return "".join(out)


def redact_texts(texts: Sequence[str]) -> tuple[list[str], int]:
    """Each text redacted (a context block as the file it shows), then every value found to be
    a secret in any of them removed from all of them: an answer or a reference that repeats a
    secret in prose cannot be told from prose on its own. Returns the texts and how many
    secrets were removed."""
    first = [_redact_one(text) for text in texts]
    values = frozenset().union(*(found for _, _, found in first))
    out, total = [], 0
    for text, count, _ in first:
        text, repeated = scrub(text, values)
        out.append(text)
        total += count + repeated
    return out, total


def _redact_one(text: str) -> tuple[str, int, frozenset[str]]:
    parts: list[Redacted] = []
    position = 0
    for block in SOURCE_BLOCK.finditer(text):
        parts.append(redact(text[position : block.start("body")]))
        parts.append(redact(block.group("body"), filename=block.group("path")))
        position = block.end("body")
    parts.append(redact(text[position:]))
    return (
        "".join(p.text for p in parts),
        sum(p.count for p in parts),
        frozenset().union(*(p.values for p in parts)),
    )
