-- One row per run and lake table (or committed output partition) it read, with the version read.
with run_inputs as (

    select * from {{ ref('stg_ops__run_inputs') }}

),

final as (

    select
        run_id,
        commit_name,
        stage,
        committed_at,
        input_table,
        input_version
    from run_inputs

)

select * from final
