with source as (

    select * from {{ source('reference', 'positions') }}

),

renamed as (

    select
        portfolio_id,
        product_id,
        as_of_date,
        quantity,
        avg_cost,
        loaded_at
    from source

)

select * from renamed
