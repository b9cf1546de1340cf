with source as (

    select * from {{ source('risk', 'anomalies_daily') }}

),

renamed as (

    select
        product_id,
        price_date,
        return_value,
        robust_z,
        threshold,
        scale_method,
        as_of_date,
        loaded_at
    from source

)

select * from renamed
