with source as (

    select * from {{ source('risk', 'firm_risk') }}

),

renamed as (

    select
        as_of_date,
        var_95_hist,
        var_99_hist,
        es_95_hist,
        es_99_hist,
        sum_standalone_var_99_hist,
        diversification_benefit,
        var_95_param,
        es_95_param,
        var_99_param,
        es_99_param,
        var_95_mc,
        es_95_mc,
        var_99_mc,
        es_99_mc,
        var_95_fhs_ewma,
        es_95_fhs_ewma,
        var_99_fhs_ewma,
        es_99_fhs_ewma,
        var_95_garch_t,
        es_95_garch_t,
        var_99_garch_t,
        es_99_garch_t,
        sum_standalone_var_95_hist,
        diversification_benefit_95_hist,
        diversification_benefit_99_hist,
        sum_standalone_var_95_param,
        diversification_benefit_95_param,
        sum_standalone_var_99_param,
        diversification_benefit_99_param,
        sum_standalone_var_95_mc,
        diversification_benefit_95_mc,
        sum_standalone_var_99_mc,
        diversification_benefit_99_mc,
        sum_standalone_var_95_fhs_ewma,
        diversification_benefit_95_fhs_ewma,
        sum_standalone_var_99_fhs_ewma,
        diversification_benefit_99_fhs_ewma,
        sum_standalone_var_95_garch_t,
        diversification_benefit_95_garch_t,
        sum_standalone_var_99_garch_t,
        diversification_benefit_99_garch_t,
        market_value,
        gross_exposure,
        n_portfolios,
        n_positions,
        lookback_days,
        currency,
        loaded_at
    from source

)

select * from renamed
