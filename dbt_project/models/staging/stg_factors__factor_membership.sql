with source as (

    select * from {{ source('factors', 'factor_membership') }}

),

renamed as (

    select
        date as membership_date,
        factor_name,
        product_id,
        weight,
        signal,
        factor_group,
        bucket,
        holding_start,
        holding_end,
        loaded_at
    from source

)

select * from renamed
