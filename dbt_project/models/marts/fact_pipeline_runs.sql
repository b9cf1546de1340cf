-- One row per task attempt of the pipeline (the run log).
with pipeline_runs as (

    select * from {{ ref('stg_ops__pipeline_runs') }}

),

final as (

    select
        record_id,
        run_id,
        dag_id,
        task_id,
        status,
        coalesce(try_number, 1) as try_number,
        rows_in,
        rows_out,
        started_at,
        cast(started_at at time zone 'UTC' as date) as run_date,
        duration_s,
        started_at + duration_s * interval '1 second' as ended_at,
        -- an attempt Airflow retries (up_for_retry) failed as much as the last one (failed)
        status in ('failed', 'up_for_retry') as is_failure,
        message
    from pipeline_runs

)

select * from final
