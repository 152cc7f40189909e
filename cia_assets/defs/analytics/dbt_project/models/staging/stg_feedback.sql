-- One row per (trace, voter): that voter's last vote, +1 (up) or -1 (down). The store keeps
-- one row per voter and trace; votes stored before voters were recorded may repeat, and only
-- the latest of them counts, so no token can outvote others by voting often.
select
    feedback_id,
    trace_id,
    voter,
    value,
    comment,
    source,
    created_at,
    updated_at
from {{ source('traces', 'feedback') }}
qualify row_number() over (partition by trace_id, voter order by seq desc) = 1
