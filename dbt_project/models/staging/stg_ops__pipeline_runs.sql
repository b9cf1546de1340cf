with source as (

    select * from {{ source('ops', 'pipeline_runs') }}

),

renamed as (

    select
        record_id,
        run_id,
        dag_id,
        task_id,
        status,
        rows_in,
        rows_out,
        started_at,
        duration_s,
        message,
        try_number,
        loaded_at
    from source

)

select * from renamed
