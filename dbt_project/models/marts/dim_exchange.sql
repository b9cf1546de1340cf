-- One row per exchange.
with exchanges as (

    select * from {{ ref('stg_reference__exchanges') }}

),

final as (

    select
        exchange_id,
        name,
        api_base_url,
        timezone
    from exchanges

)

select * from final
