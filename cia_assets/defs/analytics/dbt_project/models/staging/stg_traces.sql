-- One row per answered (or failed) question; JSON lists kept as JSON, with their lengths.
select
    trace_id,
    created_at,
    cast(date_trunc('week', created_at) as date) as week,
    interface,
    token_name,
    question,
    answer,
    not_found,
    model,
    prompt_version,
    error,
    repos,
    citations,
    coalesce(json_array_length(citations), 0) as citation_count,
    coalesce(json_array_length(invalid_citations), 0) as invalid_citation_count,
    retrieval_ms,
    generation_ms,
    first_token_ms,
    prompt_tokens,
    completion_tokens
from {{ source('traces', 'traces') }}
