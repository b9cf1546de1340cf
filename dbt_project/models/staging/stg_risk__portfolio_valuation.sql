with source as (

    select * from {{ source('risk', 'portfolio_valuation') }}

),

renamed as (

    select
        portfolio_id,
        as_of_date,
        market_value,
        unrealized_pnl,
        gross_exposure,
        net_exposure,
        long_exposure,
        short_exposure,
        concentration_pct,
        drawdown,
        base_currency,
        loaded_at
    from source

)

select * from renamed
