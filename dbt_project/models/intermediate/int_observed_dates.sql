-- Generated from etl/warehouse/tables.yml (the `calendar` columns of each raw table) by `python -m etl.warehouse.dbt_files`.
-- Every UTC day that appears in the market data or the risk outputs (input of the dim_date spine).
with bars_5m as (

    select * from {{ ref('stg_silver__bars_5m') }}

),

price_quality as (

    select * from {{ ref('stg_silver__price_quality') }}

),

bars_1d as (

    select * from {{ ref('stg_silver__bars_1d') }}

),

positions_valued as (

    select * from {{ ref('stg_risk__positions_valued') }}

),

portfolio_valuation as (

    select * from {{ ref('stg_risk__portfolio_valuation') }}

),

pnl_daily as (

    select * from {{ ref('stg_risk__pnl_daily') }}

),

risk_metrics as (

    select * from {{ ref('stg_risk__risk_metrics') }}

),

asset_risk as (

    select * from {{ ref('stg_risk__asset_risk') }}

),

var_backtest as (

    select * from {{ ref('stg_risk__var_backtest') }}

),

limit_breaches as (

    select * from {{ ref('stg_risk__limit_breaches') }}

),

var_backtest_summary as (

    select * from {{ ref('stg_risk__var_backtest_summary') }}

),

correlations as (

    select * from {{ ref('stg_risk__correlations') }}

),

drawdowns as (

    select * from {{ ref('stg_risk__drawdowns') }}

),

anomalies_daily as (

    select * from {{ ref('stg_risk__anomalies_daily') }}

),

pnl_attribution as (

    select * from {{ ref('stg_risk__pnl_attribution') }}

),

unioned as (

    select cast(bucket_start at time zone 'UTC' as date) as observed_date from bars_5m
    union
    select cast(bucket_start at time zone 'UTC' as date) as observed_date from price_quality
    union
    select price_date as observed_date from bars_1d
    union
    select as_of_date as observed_date from positions_valued
    union
    select as_of_date as observed_date from portfolio_valuation
    union
    select as_of_date as observed_date from pnl_daily
    union
    select as_of_date as observed_date from risk_metrics
    union
    select as_of_date as observed_date from asset_risk
    union
    select as_of_date as observed_date from var_backtest
    union
    select as_of_date as observed_date from limit_breaches
    union
    select as_of_date as observed_date from var_backtest_summary
    union
    select as_of_date as observed_date from correlations
    union
    select window_start as observed_date from drawdowns
    union
    select peak_date as observed_date from drawdowns
    union
    select as_of_date as observed_date from drawdowns
    union
    select price_date as observed_date from anomalies_daily
    union
    select as_of_date as observed_date from anomalies_daily
    union
    select as_of_date as observed_date from pnl_attribution

),

final as (

    select observed_date
    from unioned
    where observed_date is not null

)

select * from final
