"""Secrets are redacted from code before it is sent to a teacher model.

Two detectors, like a DLP filter at an egress proxy:
- detect-secrets (Yelp's scanner) with its default plugins finds known formats (cloud keys,
  tokens of GitHub, Slack, Stripe, JWTs, private keys, basic-auth URLs) and secret keywords
  (`password = "..."`);
- a Shannon-entropy scan over every token of 20+ characters catches the keys no plugin knows
  (detect-secrets' own entropy plugins report every quoted word when run line by line, with no
  threshold applied, so the limits are applied here).
Lines keep their numbers, so citations to a redacted chunk still point at the right lines.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

PLACEHOLDER = "<REDACTED>"
MIN_ENTROPY_TOKEN = 20
# "=" only as base64 padding: `name=VALUE` in code is two tokens, not one long one.
_TOKEN = re.compile(r"[A-Za-z0-9+/_\-.~]{" + str(MIN_ENTROPY_TOKEN) + ",}={0,2}")
_HEX = re.compile(r"^[0-9a-fA-F]+$")
_SECRET_CHARS = re.compile(r"[A-Za-z0-9_\-+/=.~]")
_PEM = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----|\Z)",
    re.DOTALL,
)
# Entropy findings of detect-secrets are replaced by the scan below (see the module docstring).
_ENTROPY_TYPES = {"Base64 High Entropy String", "Hex High Entropy String"}


@dataclass(frozen=True)
class Finding:
    line: int  # 1-based, within the text
    kind: str


@dataclass(frozen=True)
class Redacted:
    text: str
    findings: tuple[Finding, ...]

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


def _known_format_spans(line: str) -> list[tuple[int, int, str]]:
    """Call within detect-secrets' `default_settings()` (entered once per text: it is costly)."""
    from detect_secrets.core.scan import scan_line

    spans = []
    for secret in scan_line(line):
        if secret.type in _ENTROPY_TYPES or not secret.secret_value:
            continue
        position = line.find(secret.secret_value)
        if position < 0:
            continue
        start, end = _expand(line, position, position + len(secret.secret_value))
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


def redact(text: str, *, base64_limit: float = 4.5, hex_limit: float = 3.0) -> Redacted:
    """`text` with every detected secret replaced by <REDACTED>, and what was found where."""
    from detect_secrets.settings import default_settings

    findings: list[Finding] = []

    def drop_pem(match: re.Match[str]) -> str:
        findings.append(Finding(line=text.count("\n", 0, match.start()) + 1, kind="Private Key"))
        # Keep the line count so later line numbers do not move.
        return PLACEHOLDER + "\n" * match.group().count("\n")

    text = _PEM.sub(drop_pem, text)
    lines = text.split("\n")
    with default_settings():
        for number, line in enumerate(lines, start=1):
            if not line.strip() or line.strip() == PLACEHOLDER:
                continue
            spans = _known_format_spans(line) + _entropy_spans(line, base64_limit, hex_limit)
            if not spans:
                continue
            lines[number - 1] = _replace(line, spans)
            findings.extend(Finding(line=number, kind=kind) for kind in _distinct_kinds(spans))
    return Redacted(text="\n".join(lines), findings=tuple(findings))


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
