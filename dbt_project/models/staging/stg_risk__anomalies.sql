with source as (

    select * from {{ source('risk', 'anomalies') }}

),

renamed as (

    select
        product_id,
        bucket_start,
        return_value,
        robust_z,
        close,
        threshold,
        as_of_date,
        scale_method,
        loaded_at
    from source

)

select * from renamed
