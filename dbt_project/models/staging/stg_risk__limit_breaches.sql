with source as (

    select * from {{ source('risk', 'limit_breaches') }}

),

renamed as (

    select
        portfolio_id,
        as_of_date,
        limit_type,
        metric,
        value,
        limit_value,
        base_currency,
        coalesce(breach_kind, 'exceeded') as breach_kind,
        loaded_at
    from source

)

select * from renamed
