with source as (

    select * from {{ source('risk', 'asset_risk') }}

),

renamed as (

    select
        product_id,
        as_of_date,
        vol_20d,
        vol_30d,
        vol_ewma,
        max_drawdown,
        worst_daily_return,
        close,
        daily_return,
        worst_daily_return_date,
        lookback_days,
        quote_currency,
        loaded_at
    from source

)

select * from renamed
