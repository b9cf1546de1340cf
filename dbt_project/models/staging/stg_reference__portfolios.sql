with source as (

    select * from {{ source('reference', 'portfolios') }}

),

renamed as (

    select
        portfolio_id,
        name,
        base_currency,
        var_limit,
        concentration_limit,
        drawdown_limit,
        var_limit_metric,
        loaded_at
    from source

)

select * from renamed
