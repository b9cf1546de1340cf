with source as (

    select * from {{ source('risk', 'risk_metrics') }}

),

renamed as (

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
        base_currency,
        mc_distribution,
        var_95_fhs_ewma,
        es_95_fhs_ewma,
        var_99_fhs_ewma,
        es_99_fhs_ewma,
        var_95_garch_t,
        es_95_garch_t,
        var_99_garch_t,
        es_99_garch_t,
        risk_run_id,
        loaded_at
    from source

)

select * from renamed
