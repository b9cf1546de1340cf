-- Failed task attempts from 7 days before the as-of day on, newest first, with their error message.
select
    runs.started_at,
    runs.run_id,
    runs.dag_id,
    runs.task_id,
    runs.try_number,
    round((runs.duration_s)::numeric, 1) as duration_s,
    runs.message
from gold.fact_pipeline_runs as runs
where runs.run_date >= coalesce(nullif(:'as_of', '')::date, (select max(run_date) from gold.fact_pipeline_runs)) - 7
    and runs.is_failure
order by runs.started_at desc
