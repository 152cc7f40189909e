-- Questions the assistant failed: an error, a "not found" answer, or more down than up votes.
select
    t.trace_id,
    t.question,
    t.answer,
    t.model,
    t.created_at,
    t.week,
    case
        when t.error is not null then 'error'
        when t.not_found then 'not_found'
        else 'rated_down'
    end as reason,
    coalesce(v.upvotes, 0) as upvotes,
    coalesce(v.downvotes, 0) as downvotes
from {{ ref('stg_traces') }} as t
left join {{ ref('trace_votes') }} as v using (trace_id)
where t.error is not null
   or t.not_found
   or coalesce(v.downvotes, 0) > coalesce(v.upvotes, 0)
