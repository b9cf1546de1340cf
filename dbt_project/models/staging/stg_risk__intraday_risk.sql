with source as (

    select * from {{ source('risk', 'intraday_risk') }}

),

renamed as (

    select
        portfolio_id,
        bucket_start,
        as_of_date,
        market_value,
        intraday_pnl,
        gross_exposure,
        net_exposure,
        long_exposure,
        short_exposure,
        concentration_pct,
        var_95,
        var_99,
        es_95,
        es_99,
        var_95_param,
        var_99_param,
        es_95_param,
        es_99_param,
        var_95_mc,
        var_99_mc,
        es_95_mc,
        es_99_mc,
        drawdown,
        stale_products,
        stale_product_ids,
        max_price_age_s,
        prev_close_date,
        scenario_as_of_date,
        is_scenario_stale,
        base_currency,
        loaded_at
    from source

)

select * from renamed
