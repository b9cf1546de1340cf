-- One row per portfolio per as-of day per VaR method per confidence: which var method passes which backtest.
with var_model_comparison as (

    select * from {{ ref('stg_risk__var_model_comparison') }}

),

final as (

    select
        portfolio_id,
        as_of_date,
        method,
        confidence,
        exceptions,
        kupiec_p,
        christoffersen_p,
        es_test_p,
        passes,
        n_days,
        exceedance_residual_n,
        traffic_light,
        expected_exceptions,
        cc_p,
        z2,
        z2_p,
        exceedance_residual_mean,
        exceedance_residual_t,
        exceedance_residual_p,
        pass_kupiec,
        pass_christoffersen,
        pass_traffic_light,
        pass_z2,
        pass_exceedance_residual,
        window_start,
        window_end
    from var_model_comparison

)

select * from final
