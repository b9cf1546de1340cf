with source as (

    select * from {{ source('silver', 'bars_1d') }}

),

renamed as (

    select
        product_id,
        price_date,
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
