-- Task durations per DAG and task over the runs started from 7 days before the as-of day on: runs, mean, p95
-- and max duration in seconds, and the latest status.
with recent as (
    select runs.*
    from gold.fact_pipeline_runs as runs
    where runs.run_date >= coalesce(nullif(:'as_of', '')::date, (select max(run_date) from gold.fact_pipeline_runs)) - 7
),

latest as (
    select distinct on (dag_id, task_id)
        dag_id,
        task_id,
        status as last_status,
        started_at as last_started_at
    from recent
    order by dag_id, task_id, started_at desc
)

select
    recent.dag_id,
    recent.task_id,
    count(*) as runs,
    round(avg(recent.duration_s)::numeric, 1) as mean_duration_s,
    round((percentile_cont(0.95) within group (order by recent.duration_s))::numeric, 1) as p95_duration_s,
    round(max(recent.duration_s)::numeric, 1) as max_duration_s,
    latest.last_status,
    latest.last_started_at
from recent
inner join latest
    on recent.dag_id = latest.dag_id
    and recent.task_id = latest.task_id
group by recent.dag_id, recent.task_id, latest.last_status, latest.last_started_at
order by mean_duration_s desc
