"""The gate in front of serving: a challenger adapter that is worse than the champion (or the
base model) on citation validity, cite-hit, identifier recall, grounded rate or faithfulness,
beyond the configured thresholds, fails this blocking check, so `served_endpoint` does not
run after it and the champion keeps serving."""

import dagster as dg

from cia_assets.defs.evaluation.assets import rag_eval_results
from cia_assets.defs.resources import CiaConfigResource
from cia_assets.lib.core import artifacts


@dg.asset_check(asset=rag_eval_results, blocking=True)
def challenger_no_worse_than_champion(cia: CiaConfigResource) -> dg.AssetCheckResult:
    """Passes when the evaluated challenger is within `promotion` thresholds of the champion
    (the base model when no adapter has been promoted yet), or when there is no challenger."""
    from cia_assets.lib.evaluation.heldout import Verdict

    evaluation = artifacts.current(cia.layout().evaluation)
    if evaluation is None:
        return dg.AssetCheckResult(passed=False, description="no evaluation report has been published")
    verdict = Verdict.from_json(evaluation.summary["verdict"])
    if verdict.challenger is None:
        return dg.AssetCheckResult(
            passed=True, description="no challenger adapter: the served model is unchanged"
        )
    return dg.AssetCheckResult(
        passed=verdict.passed,
        description=("challenger v{} {} against the {}: {}").format(
            verdict.challenger,
            "passes" if verdict.passed else "fails",
            verdict.reference,
            "; ".join(verdict.reasons),
        ),
        metadata={
            "challenger_version": verdict.challenger,
            "compared": dg.MetadataValue.json(verdict.compared),
        },
    )
