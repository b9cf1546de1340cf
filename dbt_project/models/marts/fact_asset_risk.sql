-- One row per product per day: volatilities, drawdown and worst daily return of the asset.
with asset_risk as (

    select * from {{ ref('stg_risk__asset_risk') }}

),

final as (

    select
        product_id,
        as_of_date,
        vol_20d,
        vol_30d,
        vol_ewma,
        max_drawdown,
        worst_daily_return,
        close,
        daily_return,
        worst_daily_return_date,
        lookback_days,
        quote_currency
    from asset_risk

)

select * from final
