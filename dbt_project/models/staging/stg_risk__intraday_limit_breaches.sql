with source as (

    select * from {{ source('risk', 'intraday_limit_breaches') }}

),

renamed as (

    select
        portfolio_id,
        bucket_start,
        as_of_date,
        limit_type,
        metric,
        value,
        limit_value,
        utilisation,
        status,
        breached_at,
        base_currency,
        loaded_at
    from source

)

select * from renamed
