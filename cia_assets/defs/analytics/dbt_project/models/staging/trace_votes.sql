-- Votes per trace, one per voter (stg_feedback keeps each voter's last).
select
    trace_id,
    count(*) filter (where value > 0) as upvotes,
    count(*) filter (where value < 0) as downvotes
from {{ ref('stg_feedback') }}
group by trace_id
