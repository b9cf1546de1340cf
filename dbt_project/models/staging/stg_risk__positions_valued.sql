with source as (

    select * from {{ source('risk', 'positions_valued') }}

),

renamed as (

    select
        portfolio_id,
        product_id,
        as_of_date,
        quantity,
        avg_cost,
        close,
        market_value,
        unrealized_pnl,
        weight,
        fx_rate,
        base_currency,
        loaded_at
    from source

)

select * from renamed
