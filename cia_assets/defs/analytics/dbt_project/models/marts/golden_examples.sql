-- Answers users rated up more than down, that cite code, with no error and not "not found":
-- the golden set the next training round learns from. (Invalid markers were removed before the
-- user saw the answer, so they do not disqualify what was rated.)
select
    t.trace_id,
    t.question,
    t.answer,
    t.repos,
    t.citations,
    t.model,
    t.created_at,
    v.upvotes,
    v.downvotes
from {{ ref('stg_traces') }} as t
inner join {{ ref('trace_votes') }} as v using (trace_id)
where v.upvotes > v.downvotes
  and not t.not_found
  and t.error is null
  and t.citation_count > 0
