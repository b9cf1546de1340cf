-- One row per portfolio per day per VaR method per confidence: the forecast against the realized PnL.
with var_backtest as (

    select * from {{ ref('stg_risk__var_backtest') }}

),

final as (

    select
        portfolio_id,
        as_of_date,
        method,
        confidence,
        var_forecast,
        realized_pnl,
        is_exception,
        forecast_date,
        base_currency,
        es_forecast,
        loss_sd
    from var_backtest

)

select * from final
