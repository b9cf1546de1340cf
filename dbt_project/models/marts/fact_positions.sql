-- One row per portfolio per product per day: the carried-forward holding valued at the day's close.
with positions_valued as (

    select * from {{ ref('stg_risk__positions_valued') }}

),

final as (

    select
        portfolio_id,
        product_id,
        as_of_date,
        quantity,
        avg_cost,
        close,
        market_value,
        unrealized_pnl,
        weight,
        fx_rate,
        base_currency
    from positions_valued

)

select * from final
