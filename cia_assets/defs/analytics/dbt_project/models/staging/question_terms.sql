-- The words of each question that can name a topic: lower case, 4+ characters, not a stopword.
with words as (
    select
        trace_id,
        week,
        unnest(regexp_split_to_array(lower(question), '[^a-z0-9_]+')) as term
    from {{ ref('stg_traces') }}
)
select distinct trace_id, week, term
from words
where length(term) >= 4
  and not regexp_matches(term, '^[0-9]+$')
  and term not in (select word from {{ ref('stopwords') }})
