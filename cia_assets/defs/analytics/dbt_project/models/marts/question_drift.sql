-- Drift in what users ask, per week: a term is new when no earlier week's question used it;
-- new_topic_share is the share of the week's questions with at least one new term.
with first_seen as (
    select term, min(week) as first_week
    from {{ ref('question_terms') }}
    group by term
),
per_question as (
    select
        q.week,
        q.trace_id,
        max(case when f.first_week = q.week then 1 else 0 end) as has_new_term
    from {{ ref('question_terms') }} as q
    inner join first_seen as f using (term)
    group by q.week, q.trace_id
),
weeks as (
    select week, count(*) as questions
    from {{ ref('stg_traces') }}
    group by week
)
select
    w.week,
    w.questions,
    (select count(*) from first_seen as f where f.first_week = w.week) as new_terms,
    coalesce(sum(p.has_new_term), 0) as questions_with_new_terms,
    round(coalesce(sum(p.has_new_term), 0) / w.questions, 4) as new_topic_share
from weeks as w
left join per_question as p using (week)
group by w.week, w.questions
order by w.week
