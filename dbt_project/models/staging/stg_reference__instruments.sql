with source as (

    select * from {{ source('reference', 'instruments') }}

),

renamed as (

    select
        product_id,
        base_currency,
        quote_currency,
        exchange_id,
        asset_class,
        display_name,
        loaded_at
    from source

)

select * from renamed
