-- One row per vote: +1 (up) or -1 (down) on a trace.
select
    feedback_id,
    trace_id,
    value,
    comment,
    source,
    created_at
from {{ source('traces', 'feedback') }}
