import dagster as dg

from cia_assets.defs.repos.partitions import OWNERS
from cia_assets.defs.resources import CiaConfigResource


class ServedEndpointConfig(dg.Config):
    rollback: bool = False
    """Make the endpoint that was live before the current one live again."""


@dg.asset(group_name="serving", kinds={"llm", "openai"}, owners=OWNERS, code_version="1")
def served_endpoint(
    context: dg.AssetExecutionContext, config: ServedEndpointConfig, cia: CiaConfigResource
) -> dg.MaterializeResult:
    """What answers questions: engine, base URL, model, adapter and its version.

    Materializing it is a blue-green switch with no dropped request: the new model server is
    started (or the remote endpoint checked), tested with a real completion, recorded as live
    (the chat app, `cia ask` and MCP read that record before each question), and the old local
    server is stopped after a drain. Every record stays in the history: run with
    `rollback: true` to make the previous one live again. Embedded default: the packaged
    SmolLM2 on llama.cpp's server; cluster: vLLM by URL; any OpenAI-compatible endpoint by
    configuration.
    """
    from cia_assets.lib.endpoint import EndpointError, deploy_endpoint

    try:
        new, previous, latency_ms = deploy_endpoint(
            cia.load(), rollback=config.rollback, log_line=context.log.info
        )
    except EndpointError as error:
        raise dg.Failure(description=f"{error}. The live endpoint is unchanged.") from error
    return dg.MaterializeResult(
        metadata={
            "version": new.version,
            "engine": new.engine,
            "base_url": dg.MetadataValue.url(new.base_url),
            "model": new.model,
            "adapter": new.adapter or "none",
            "adapter_version": new.adapter_version or "none",
            "origin": new.origin,
            "previous_version": previous.version if previous else 0,
            "pid": new.pid or 0,
            "fingerprint": new.fingerprint,
            "test_completion_ms": round(latency_ms, 1),
        }
    )
