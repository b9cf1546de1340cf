with source as (

    select * from {{ source('risk', 'var_backtest_summary') }}

),

renamed as (

    select
        portfolio_id,
        as_of_date,
        method,
        confidence,
        n_days,
        exceptions,
        traffic_light,
        expected_exceptions,
        kupiec_lr,
        kupiec_p,
        christoffersen_ind_lr,
        christoffersen_ind_p,
        cc_lr,
        cc_p,
        window_start,
        window_end,
        loaded_at
    from source

)

select * from renamed
