"""The report of an answer-eval run: its rows summarized per model and repo (shares, means,
p50/p95 latencies), rendered as a table or JSON, and its rows written one per line.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cia_assets.lib.evaluation.answers.scoring import CaseRow, grounded_rate

RAGAS_METRICS = ("faithfulness", "answer_relevancy")
LATENCIES = ("sources_ms", "first_token_ms", "total_ms")

# --- summaries -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation between closest ranks (numpy's
    default): within the values' range, exact on the median. None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _share(flags: Sequence[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def _mean(values: Sequence[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def summarize(rows: Sequence[CaseRow]) -> dict[str, Any]:
    """Every metric over `rows` (one model's answers, or one repo's of them); questions that
    failed with an error count in `errors` only. A metric with no case to measure is None."""
    done = [r for r in rows if r.error is None]
    real = [r for r in done if not r.absent]
    absent = [r for r in done if r.absent]
    hits = [r.cite_hit for r in real if r.cite_hit is not None]
    recalls = [r.recall for r in real if r.recall is not None]
    graded = [r for r in done if r.grounding_checked is not None and r.ungrounded is not None]
    checked = sum(r.grounding_checked or 0 for r in graded)
    ungrounded = sum(len(r.ungrounded or []) for r in graded)
    false_abstention = _share([r.not_found for r in real])
    summary: dict[str, Any] = {
        "questions": len(rows),
        "real": len(real),
        "absent": len(absent),
        "errors": len(rows) - len(done),
        "cite_hit": _share(hits),
        "cite_hit_cases": len(hits),
        "ref_identifier_recall": _mean(recalls),
        "recall_cases": len(recalls),
        "grounded_rate": grounded_rate(checked, ungrounded, sum(1 for r in graded if not r.not_found)),
        "grounding_checked": checked if graded else None,
        "ungrounded": ungrounded if graded else None,
        "abstention": _share([r.not_found for r in absent]),
        "false_abstention": false_abstention,
        "answered_rate": None if false_abstention is None else round(1.0 - false_abstention, 4),
        "words": _mean([float(r.words) for r in done if not r.not_found]),
    }
    for name in LATENCIES:
        values = [value for r in done if (value := getattr(r, name)) is not None]
        summary[f"{name}_p50"] = _ms(percentile(values, 50))
        summary[f"{name}_p95"] = _ms(percentile(values, 95))
    for name in RAGAS_METRICS:
        summary[name] = _mean([value for r in real if (value := getattr(r, name)) is not None])
    return summary


# --- the report ------------------------------------------------------------------------------


@dataclass
class AnswerReport:
    rows: list[CaseRow] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # case id -> why it was not asked
    index: dict[str, dict[str, Any]] = field(default_factory=dict)  # repo@commit -> index figures
    index_timings: dict[str, dict[str, float]] = field(default_factory=dict)
    judge: str | None = None  # the judge's model@url, when ragas scored
    judge_failures: dict[str, int] = field(default_factory=dict)

    def models(self) -> list[str]:
        return list(dict.fromkeys(r.model for r in self.rows))

    def summaries(self) -> dict[str, dict[str, dict[str, Any]]]:
        """model -> repo (and "all") -> metrics."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for model in self.models():
            rows = [r for r in self.rows if r.model == model]
            per = {
                repo: summarize([r for r in rows if r.repo == repo])
                for repo in dict.fromkeys(r.repo for r in rows)
            }
            per["all"] = summarize(rows)
            out[model] = per
        return out

    def to_json(self, *, cases: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "models": self.summaries(),
            "skipped": self.skipped,
            "index": self.index,
            "index_timings": self.index_timings,
            "judge": self.judge,
            "judge_failures": self.judge_failures,
        }
        if cases:
            data["cases"] = [r.to_json() for r in self.rows]
        return data

    def write_rows(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as out:
            for row in self.rows:
                out.write(json.dumps(row.to_json(), ensure_ascii=False) + "\n")

    def table(self) -> str:
        """A readable table: one line per model and repo (and "all" with several repos)."""
        columns = [
            ("model", 26, lambda m, r, s: m),
            ("repo", 22, lambda m, r, s: r),
            ("real", 4, lambda m, r, s: str(s["real"])),
            ("abs", 3, lambda m, r, s: str(s["absent"])),
            ("err", 3, lambda m, r, s: str(s["errors"])),
            ("cite_hit", 8, lambda m, r, s: _fmt(s["cite_hit"])),
            ("id_recall", 9, lambda m, r, s: _fmt(s["ref_identifier_recall"])),
            ("grounded", 8, lambda m, r, s: _fmt(s["grounded_rate"])),
            ("abstain", 7, lambda m, r, s: _fmt(s["abstention"])),
            ("false_abst", 10, lambda m, r, s: _fmt(s["false_abstention"])),
            ("words", 5, lambda m, r, s: _fmt(s["words"], "{:.0f}")),
            ("sources ms p50/95", 17, lambda m, r, s: _pair(s, "sources_ms")),
            ("1st token p50/95", 16, lambda m, r, s: _pair(s, "first_token_ms")),
            ("total ms p50/95", 15, lambda m, r, s: _pair(s, "total_ms")),
        ]
        if self.judge is not None:
            columns += [
                ("faithful", 8, lambda m, r, s: _fmt(s["faithfulness"])),
                ("relevancy", 9, lambda m, r, s: _fmt(s["answer_relevancy"])),
            ]
        lines = ["  ".join(name.ljust(width) for name, width, _ in columns)]
        for model, per in self.summaries().items():
            repos = [repo for repo in per if repo != "all"]
            for repo in [*repos, "all"] if len(repos) > 1 else repos:
                lines.append(
                    "  ".join(
                        cell(model, repo, per[repo]).ljust(width) for _, width, cell in columns
                    ).rstrip()
                )
        return "\n".join(lines)


def _fmt(value: float | None, pattern: str = "{:.3f}") -> str:
    return "-" if value is None else pattern.format(value)


def _pair(summary: Mapping[str, Any], name: str) -> str:
    low, high = summary[f"{name}_p50"], summary[f"{name}_p95"]
    return "-" if low is None else f"{low:.0f}/{high:.0f}"
