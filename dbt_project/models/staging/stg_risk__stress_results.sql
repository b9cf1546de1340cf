with source as (

    select * from {{ source('risk', 'stress_results') }}

),

renamed as (

    select
        scope,
        portfolio_id,
        as_of_date,
        scenario_id,
        scenario_type,
        pnl,
        pnl_pct,
        window_start,
        window_end,
        description,
        base_currency,
        loaded_at
    from source

)

select * from renamed
