"""Evaluation on the held-out split: retrieval, citations and answer quality per model, and
the promotion verdict that gates serving.

- Retrieval: for each eval question, is its source file / source chunk among the top k
  (Recall@k) and at what rank (MRR)?
- Citations: the share of answers that keep at least one valid citation and no invalid one
  (citation validity), and the share citing the question's source file (cite-hit).
- What the answers say, scored as `cia eval-answers` scores them (`answers.scoring`): the
  share of the reference answer's identifiers an answer names (identifier recall) and the
  share of the names and quoted lines it checked that its sources hold (grounded rate).
  Citation validity alone cannot tell a wrong answer from a right one: a model that cites [1]
  whatever it says keeps it; these can.
- Answer quality: ragas (faithfulness, answer relevancy, context precision and recall) with a
  judge endpoint, when configured.
- A fixed question set (`evaluation.question_sets`), when configured: the same questions in
  every run, scored as `cia eval-answers` scores them, with abstention (the share of
  absent-feature questions answered "not found"); its figures are named `set_<metric>`.
Models are compared on the same questions through the same answering path: the teacher (when
it is a separate endpoint), the base model, the champion adapter and the challenger.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cia_assets.lib.answering.answer import Answer
from cia_assets.lib.core.records import SourceSpan
from cia_assets.lib.evaluation.answers.report import summarize
from cia_assets.lib.evaluation.answers.scoring import (
    CaseRow,
    answer_prose,
    grounded_rate,
    identifier_recall,
    reference_identifiers,
)

K_VALUES = (1, 5, 10)
# What a fixed question set adds to a model's figures (each as `set_<name>`).
SET_METRICS = ("cite_hit", "ref_identifier_recall", "grounded_rate", "abstention", "false_abstention")


@dataclass(frozen=True, kw_only=True)
class EvalCase(SourceSpan):
    """A held-out question about the span its reference answer comes from."""

    question: str
    reference: str
    chunk_id: str | None
    origin: str

    @classmethod
    def from_example(cls, row: dict[str, Any]) -> EvalCase:
        source = row["source"]
        return cls(
            question=row["question"],
            reference=row["reference"],
            repo=source["repo"],
            path=source["path"],
            line_start=int(source["line_start"]),
            line_end=int(source["line_end"]),
            chunk_id=row.get("chunk_id"),
            origin=row.get("origin", "synthetic"),
        )


def _first_rank(hits: Sequence[SourceSpan], match: Callable[[SourceSpan], bool]) -> int | None:
    for rank, hit in enumerate(hits, start=1):
        if match(hit):
            return rank
    return None


def retrieval_metrics(
    cases: Sequence[EvalCase], search: Callable[[EvalCase], Sequence[SourceSpan]]
) -> dict[str, Any]:
    """Recall@k and MRR of the source file and of the source chunk (a hit overlapping the
    source's lines in the same file)."""
    file_ranks: list[int | None] = []
    chunk_ranks: list[int | None] = []
    for case in cases:
        hits = search(case)

        def same_file(hit: SourceSpan, case: EvalCase = case) -> bool:
            return hit.file_key == case.file_key

        def same_chunk(hit: SourceSpan, case: EvalCase = case) -> bool:
            return hit.overlaps(case)

        file_ranks.append(_first_rank(hits, same_file))
        chunk_ranks.append(_first_rank(hits, same_chunk))
    metrics: dict[str, Any] = {"cases": len(cases)}
    for name, ranks in (("file", file_ranks), ("chunk", chunk_ranks)):
        for k in K_VALUES:
            metrics[f"{name}_recall@{k}"] = _share(
                sum(1 for r in ranks if r is not None and r <= k), len(ranks)
            )
        metrics[f"{name}_mrr"] = _share(sum(1.0 / r for r in ranks if r is not None), len(ranks))
    return metrics


def _share(part: float, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


@dataclass
class ModelResult:
    """One model's answers to the eval questions and their scores."""

    name: str
    model: str
    answers: list[tuple[EvalCase, Answer]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    quality: dict[str, float | None] = field(default_factory=dict)
    quality_failures: dict[str, int] = field(default_factory=dict)
    set_rows: list[CaseRow] = field(default_factory=list)  # the fixed question set's answers

    def citation_metrics(self) -> dict[str, float | None]:
        """Shares of all questions asked (a question whose answer failed counts against)."""
        asked = len(self.answers) + len(self.errors)
        answers = [answer for _, answer in self.answers]
        valid = sum(1 for a in answers if a.citations and not a.invalid_citations and not a.not_found)
        cites_source = sum(
            1
            for case, answer in self.answers
            if any(c.repo == case.repo and c.path == case.path for c in answer.citations)
        )
        recalls = [
            recall
            for case, answer in self.answers
            if (identifiers := reference_identifiers(case.reference))
            and (recall := identifier_recall(answer_prose(answer), identifiers)[0]) is not None
        ]
        checked = sum(answer.grounding_checked for answer in answers)
        ungrounded = sum(len(answer.ungrounded) for answer in answers)
        return {
            "citation_validity": _share(valid, asked),
            "cites_source_file": _share(cites_source, asked),
            "ref_identifier_recall": round(sum(recalls) / len(recalls), 4) if recalls else None,
            "grounded_rate": grounded_rate(checked, ungrounded, sum(1 for a in answers if not a.not_found)),
            "not_found_rate": _share(sum(1 for a in answers if a.not_found), asked),
            "invalid_citation_rate": _share(sum(1 for a in answers if a.invalid_citations), asked),
            "error_rate": _share(len(self.errors), asked),
        }

    def set_metrics(self) -> dict[str, float | None]:
        """The fixed question set's figures (none when no set was asked)."""
        if not self.set_rows:
            return {}
        summary = summarize(self.set_rows)
        asked = len(self.set_rows)
        return {f"set_{name}": summary[name] for name in SET_METRICS} | {
            "set_error_rate": _share(summary["errors"], asked)
        }

    def metrics(self) -> dict[str, float | None]:
        return {**self.citation_metrics(), **self.quality, **self.set_metrics()}


@dataclass(frozen=True)
class Verdict:
    """Whether the challenger may serve, and why (shown on the blocking check)."""

    passed: bool
    challenger: str | None
    reference: str  # champion or base model: what it was compared with
    reasons: tuple[str, ...]
    compared: dict[str, dict[str, float | None]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Verdict:
        return cls(**{**data, "reasons": tuple(data["reasons"])})


def promotion_verdict(
    challenger: dict[str, float | None] | None,
    reference: dict[str, float | None],
    *,
    challenger_version: str | None,
    reference_name: str,
    max_drops: dict[str, float],
) -> Verdict:
    """The challenger passes when, on every gated metric, it is no worse than the reference by
    more than that metric's allowed drop. A metric the judge could not measure for the
    challenger fails the gate (unknown is not "no worse"); one unmeasured for the reference
    is skipped with a reason."""
    if challenger is None:
        return Verdict(False, challenger_version, reference_name, ("no challenger was evaluated",), {})
    reasons: list[str] = []
    passed = True
    compared: dict[str, dict[str, float | None]] = {}
    for metric, allowed in max_drops.items():
        new, old = challenger.get(metric), reference.get(metric)
        compared[metric] = {"challenger": new, reference_name: old, "max_drop": allowed}
        if old is None:
            reasons.append(f"{metric}: not measured for the {reference_name}; not gated")
        elif new is None:
            passed = False
            reasons.append(f"{metric}: not measured for the challenger")
        elif new < old - allowed:
            passed = False
            reasons.append(
                f"{metric}: {new:.3f} is below the {reference_name}'s {old:.3f} by more than {allowed}"
            )
        else:
            reasons.append(
                f"{metric}: {new:.3f} vs the {reference_name}'s {old:.3f} (allowed drop {allowed})"
            )
    return Verdict(passed, challenger_version, reference_name, tuple(reasons), compared)
