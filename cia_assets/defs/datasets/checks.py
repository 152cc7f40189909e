"""Checks on the published synthetic dataset: its rows have the expected shape, it is not
empty, and no secret is left in anything that went to (or came from) the teacher."""

import dagster as dg

from cia_assets.defs.datasets.assets import synthetic_qa_dataset
from cia_assets.defs.resources import CiaConfigResource
from cia_assets.lib.core import artifacts
from cia_assets.lib.core.layout import PAIRS_FILE


def _rows(cia: CiaConfigResource) -> list[dict[str, object]] | None:
    current = artifacts.current(cia.layout().synthetic_datasets)
    return None if current is None else artifacts.read_jsonl(current.path / PAIRS_FILE)


@dg.asset_check(asset=synthetic_qa_dataset, blocking=True)
def synthetic_pairs_match_schema(cia: CiaConfigResource) -> dg.AssetCheckResult:
    """Every row parses as a pair with a question, an answer citing [1], and a source whose
    line range is valid."""
    from cia_assets.lib.learning.synthetic import SyntheticPair, cites_only_its_source

    rows = _rows(cia) or []
    problems = []
    for number, row in enumerate(rows, start=1):
        try:
            pair = SyntheticPair.from_json(dict(row))
        except (TypeError, KeyError) as error:
            problems.append(f"row {number}: {error}")
            continue
        if not pair.question.strip() or not cites_only_its_source(pair.answer):
            problems.append(f"row {number}: empty question or an answer that does not cite [1]")
        if not 1 <= pair.source.line_start <= pair.source.line_end:
            problems.append(f"row {number}: invalid lines {pair.source.line_start}-{pair.source.line_end}")
    return dg.AssetCheckResult(
        passed=not problems, metadata={"rows": len(rows), "problems": dg.MetadataValue.json(problems[:20])}
    )


@dg.asset_check(asset=synthetic_qa_dataset, blocking=True)
def synthetic_dataset_not_empty(cia: CiaConfigResource) -> dg.AssetCheckResult:
    rows = _rows(cia)
    return dg.AssetCheckResult(passed=bool(rows), metadata={"rows": len(rows or [])})


@dg.asset_check(asset=synthetic_qa_dataset, blocking=True)
def synthetic_dataset_has_no_secrets(cia: CiaConfigResource) -> dg.AssetCheckResult:
    """Runs the redaction detectors again over every question, answer and source text."""
    from cia_assets.lib.learning.redaction import redact

    settings = cia.load().datasets
    found = []
    for number, row in enumerate(_rows(cia) or [], start=1):
        source = row.get("source")
        # The source's lines are read as their file (a name in code is not a secret).
        path = str(source["path"]) if isinstance(source, dict) and source.get("path") else None
        for key in ("question", "answer", "source_text"):
            result = redact(
                str(row.get(key, "")),
                filename=path if key == "source_text" else None,
                base64_limit=settings.entropy_limit_base64,
                hex_limit=settings.entropy_limit_hex,
            )
            found += [f"row {number} {key} line {f.line}: {f.kind}" for f in result.findings]
    return dg.AssetCheckResult(passed=not found, metadata={"findings": dg.MetadataValue.json(found[:20])})
