-- One row per portfolio per day: 1-day VaR/ES by method and confidence, volatilities and drawdown.
with risk_metrics as (

    select * from {{ ref('stg_risk__risk_metrics') }}

),

final as (

    select
        portfolio_id,
        as_of_date,
        var_95_hist,
        var_99_hist,
        es_95_hist,
        es_99_hist,
        var_95_param,
        var_99_param,
        es_95_param,
        es_99_param,
        var_95_mc,
        var_99_mc,
        es_95_mc,
        es_99_mc,
        vol_20d,
        vol_30d,
        vol_ewma,
        max_drawdown,
        lookback_days,
        gross_exposure,
        mc_scenarios,
        mc_distribution,
        base_currency,
        var_95_fhs_ewma,
        es_95_fhs_ewma,
        var_99_fhs_ewma,
        es_99_fhs_ewma,
        var_95_garch_t,
        es_95_garch_t,
        var_99_garch_t,
        es_99_garch_t,
        risk_run_id
    from risk_metrics

)

select * from final
