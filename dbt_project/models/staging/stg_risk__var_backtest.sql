with source as (

    select * from {{ source('risk', 'var_backtest') }}

),

renamed as (

    select
        portfolio_id,
        as_of_date,
        method,
        confidence,
        var_forecast,
        realized_pnl,
        is_exception,
        forecast_date,
        base_currency,
        es_forecast,
        loss_sd,
        loaded_at
    from source

)

select * from renamed
