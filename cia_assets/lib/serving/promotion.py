"""What `served_endpoint` serves next: the champion, a challenger as canary, or a promoted
challenger. Like a progressive delivery controller (Argo Rollouts, Flagger): a new version that
passed its analysis gets a share of the traffic first, then all of it; one that failed gets none.
"""

from __future__ import annotations

from dataclasses import dataclass

from cia_assets.config import CiaConfig
from cia_assets.lib.core import artifacts
from cia_assets.lib.evaluation.heldout import Verdict
from cia_assets.lib.learning.registry import CHALLENGER, CHAMPION, AdapterRegistry, spec_for_adapter
from cia_assets.lib.serving.endpoint import EndpointSpec, current_endpoint


@dataclass(frozen=True)
class RolloutPlan:
    stage: str  # pinned | base | champion | awaiting-evaluation | refused | canary | promoted
    reason: str
    primary: EndpointSpec
    canary: EndpointSpec | None = None
    canary_share: float = 0.0
    promote_version: str | None = None

    def commit(self, registry: AdapterRegistry) -> None:
        """After the switch succeeded: move the `champion` alias to a promoted challenger."""
        if self.promote_version is not None:
            registry.promote(self.promote_version)


def latest_verdict(config: CiaConfig) -> Verdict | None:
    evaluation = artifacts.current(config.layout.evaluation)
    if evaluation is None or "verdict" not in evaluation.summary:
        return None
    return Verdict.from_json(evaluation.summary["verdict"])


def plan_rollout(config: CiaConfig, registry: AdapterRegistry) -> RolloutPlan:
    configured = EndpointSpec.from_config(config)
    if config.llm.adapter:
        return RolloutPlan("pinned", f"llm.adapter in cia.yaml pins {config.llm.adapter}", configured)
    champion = registry.by_alias(CHAMPION)
    challenger = registry.by_alias(CHALLENGER)
    primary = spec_for_adapter(configured, champion)
    serving = f"champion v{champion.version}" if champion else "the base model"
    stage = "champion" if champion else "base"
    if challenger is None or (champion is not None and challenger.version == champion.version):
        return RolloutPlan(stage, f"no challenger; serving {serving}", primary)
    verdict = latest_verdict(config)
    if verdict is None or verdict.challenger != challenger.version:
        return RolloutPlan(
            "awaiting-evaluation",
            f"challenger v{challenger.version} is not evaluated; serving {serving}",
            primary,
        )
    if not verdict.passed:
        return RolloutPlan(
            "refused",
            f"challenger v{challenger.version} failed evaluation ({'; '.join(verdict.reasons)}); "
            f"serving {serving}",
            primary,
        )
    candidate = spec_for_adapter(configured, challenger)
    share = config.promotion.canary_share
    live = current_endpoint(config)
    in_canary = (
        live is not None and live.canary is not None and live.canary.adapter_version == challenger.version
    )
    if share > 0 and not in_canary:
        return RolloutPlan(
            "canary",
            f"challenger v{challenger.version} passed evaluation; "
            f"canary for {share:.0%} of questions beside {serving}",
            primary,
            canary=candidate,
            canary_share=share,
        )
    return RolloutPlan(
        "promoted",
        f"challenger v{challenger.version} passed evaluation"
        + (" and served its canary" if in_canary else "")
        + "; promoted to champion",
        candidate,
        promote_version=challenger.version,
    )
