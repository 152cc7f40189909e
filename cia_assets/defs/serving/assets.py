from typing import TYPE_CHECKING, Any

import dagster as dg

from cia_assets.defs.evaluation.assets import rag_eval_results
from cia_assets.defs.owners import OWNERS
from cia_assets.defs.resources import CiaConfigResource, MlflowResource

if TYPE_CHECKING:
    from cia_assets.lib.serving.endpoint import EndpointRecord


class ServedEndpointConfig(dg.Config):
    rollback: bool = False
    """Make the endpoint that was live before the current one live again."""


@dg.asset(
    deps=[rag_eval_results],
    group_name="serving",
    kinds={"llm", "openai", "mlflow"},
    owners=OWNERS,
    code_version="2",
)
def served_endpoint(
    context: dg.AssetExecutionContext,
    config: ServedEndpointConfig,
    cia: CiaConfigResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """What answers questions: engine, base URL, model, adapter and its version, and a canary.

    Which adapter: the MLflow `champion` (none yet: the base model), unless cia.yaml's
    `llm.adapter` pins one. A `challenger` that passed its evaluation is first served as a
    canary to `promotion.canary_share` of the questions beside the champion; the next
    materialization promotes it (alias `champion`) and serves it alone. A challenger that
    failed its evaluation is not served: the champion stays.

    Materializing is a blue-green switch with no dropped request: the new model server is
    started (or the remote endpoint checked), tested with a real completion, recorded as live
    (the chat app, `cia ask` and MCP read that record before each question), and the old local
    server is stopped after a drain. Every record stays in the history: run with
    `rollback: true` to make the previous one live again.
    """
    from cia_assets.lib.serving.endpoint import EndpointError, deploy_endpoint
    from cia_assets.lib.serving.promotion import plan_rollout

    settings = cia.load()
    try:
        if config.rollback:
            plan = None
            new, previous, latency_ms = deploy_endpoint(settings, rollback=True, log_line=context.log.info)
        else:
            plan = plan_rollout(settings, mlflow.registry())
            context.log.info(f"rollout: {plan.stage}: {plan.reason}")
            new, previous, latency_ms = deploy_endpoint(
                settings,
                spec=plan.primary,
                canary=plan.canary,
                canary_share=plan.canary_share,
                note=plan.stage,
                log_line=context.log.info,
            )
            plan.commit(mlflow.registry())
    except EndpointError as error:
        raise dg.Failure(description=f"{error}. The live endpoint is unchanged.") from error
    canary = new.canary
    return dg.MaterializeResult(
        metadata={
            **endpoint_metadata(new),
            "rollout": plan.stage if plan else "rollback",
            "rollout_reason": plan.reason if plan else "rollback requested",
            "canary_adapter_version": (canary.adapter_version or "none") if canary else "none",
            "canary_share": new.canary_share,
            "previous_version": previous.version if previous else 0,
            "test_completion_ms": round(latency_ms, 1),
        }
    )


def endpoint_metadata(record: "EndpointRecord") -> dict[str, Any]:
    """What the asset page shows of a live endpoint record, however it became live."""
    return {
        "version": record.version,
        "engine": record.engine,
        "base_url": dg.MetadataValue.url(record.base_url),
        "model": record.model,
        "adapter": record.adapter or "none",
        "adapter_version": record.adapter_version or "none",
        "origin": record.origin,
        "pid": record.pid or 0,
        "fingerprint": record.fingerprint,
    }
