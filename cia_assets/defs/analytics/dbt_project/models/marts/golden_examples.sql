-- Answers rated up by at least one voter and down by none, that cite code, with no error and
-- not "not found": the golden set the next training round learns from. One down vote keeps an
-- answer out, however many up votes it has: training on a disputed answer costs more than
-- leaving it out. (Invalid markers were removed before the user saw the answer, so they do
-- not disqualify what was rated.)
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
where v.upvotes > 0
  and v.downvotes = 0
  and not t.not_found
  and t.error is null
  and t.citation_count > 0
