-- One row per portfolio per as-of day per VaR method per confidence: backtest statistics over the window.
with var_backtest_summary as (

    select * from {{ ref('stg_risk__var_backtest_summary') }}

),

final as (

    select
        portfolio_id,
        as_of_date,
        method,
        confidence,
        window_start,
        window_end,
        n_days,
        exceptions,
        expected_exceptions,
        kupiec_lr,
        kupiec_p,
        christoffersen_ind_lr,
        christoffersen_ind_p,
        cc_lr,
        cc_p,
        traffic_light
    from var_backtest_summary

)

select * from final
