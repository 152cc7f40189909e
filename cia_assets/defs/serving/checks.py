"""The gate on what answers questions: a served endpoint that cannot answer a question about
the indexed code from the code it is about fails its blocking check."""

import dagster as dg

from cia_assets.defs.resources import CiaConfigResource
from cia_assets.defs.serving.assets import served_endpoint


@dg.asset_check(asset=served_endpoint, blocking=True)
def answers_smoke_question_with_citation(cia: CiaConfigResource) -> dg.AssetCheckResult:
    """Asks the live endpoint about a definition that appears in exactly one indexed chunk;
    passes when the answer cites that chunk (a valid citation: its lines exist at the indexed
    commit) and names or quotes nothing its sources do not hold. A wrong answer with
    well-formed citations to other code fails."""
    from cia_assets.lib.answering.answer import AnswerError
    from cia_assets.lib.answering.service import AssistantService
    from cia_assets.lib.answering.smoke import smoke_test

    config = cia.load()
    service = AssistantService(config)
    try:
        result = smoke_test(config, service.answerer)
    except AnswerError as error:
        return dg.AssetCheckResult(passed=False, description=str(error))
    finally:
        service.flush()
        service.close()
    answer = result.answer
    return dg.AssetCheckResult(
        passed=result.passed,
        description=result.failure,
        metadata={
            "question": result.question,
            "repo": result.repo,
            "expected_chunk": result.expected.label,
            "cited_expected_chunk": result.cited_expected,
            "citations": [c.link for c in answer.citations],
            "invalid_citations": answer.invalid_citations,
            "ungrounded": answer.ungrounded,
            "answer": dg.MetadataValue.md(answer.answer),
            "trace_id": answer.trace_id,
            "first_token_ms": answer.timings_ms.get("first_token_ms"),
        },
    )
