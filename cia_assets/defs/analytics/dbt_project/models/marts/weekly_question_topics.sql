-- The ten most asked-about terms of each ISO week (ties broken alphabetically).
with counted as (
    select week, term as topic, count(*) as questions
    from {{ ref('question_terms') }}
    group by week, term
)
select
    week,
    topic,
    questions,
    row_number() over (partition by week order by questions desc, topic) as rank
from counted
qualify rank <= 10
