-- One row per scope (portfolio | firm) per portfolio per scenario per as-of day: stress test pnl of today's book.
with stress_results as (

    select * from {{ ref('stg_risk__stress_results') }}

),

final as (

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
        base_currency
    from stress_results

)

select * from final
