-- One row per product ever loaded (the instrument master; one gone from instruments.csv stays, is_current false).
with instruments as (

    select * from {{ ref('stg_reference__instruments') }}

),

final as (

    select
        product_id,
        base_currency,
        quote_currency,
        exchange_id,
        asset_class,
        coalesce(display_name, product_id) as display_name,
        delisted_on,
        is_current
    from instruments

)

select * from final
