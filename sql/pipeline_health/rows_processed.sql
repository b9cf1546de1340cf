-- Rows read and written per day, DAG and task (successful attempts) from 7 days before the as-of day on.
select
    runs.run_date,
    runs.dag_id,
    runs.task_id,
    count(*) as successful_runs,
    sum(runs.rows_in)::bigint as rows_in,
    sum(runs.rows_out)::bigint as rows_out
from gold.fact_pipeline_runs as runs
where runs.run_date >= coalesce(nullif(:'as_of', '')::date, (select max(run_date) from gold.fact_pipeline_runs)) - 7
    and runs.status = 'success'
group by runs.run_date, runs.dag_id, runs.task_id
order by runs.run_date desc, runs.dag_id, runs.task_id
