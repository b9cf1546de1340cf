-- One row per portfolio per day: market value, unrealized PnL and exposures in the portfolio's base currency.
with portfolio_valuation as (

    select * from {{ ref('stg_risk__portfolio_valuation') }}

),

final as (

    select
        portfolio_id,
        as_of_date,
        market_value,
        unrealized_pnl,
        gross_exposure,
        net_exposure,
        long_exposure,
        short_exposure,
        concentration_pct,
        drawdown,
        base_currency
    from portfolio_valuation

)

select * from final
