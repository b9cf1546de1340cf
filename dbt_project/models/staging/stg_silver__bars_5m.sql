with source as (

    select * from {{ source('silver', 'bars_5m') }}

),

renamed as (

    select
        product_id,
        bucket_start,
        open,
        high,
        low,
        close,
        volume,
        vwap,
        n_candles,
        is_complete,
        quote_currency,
        first_candle_at,
        last_candle_at,
        loaded_at
    from source

)

select * from renamed
