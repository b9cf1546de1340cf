with source as (

    select * from {{ source('risk', 'correlations') }}

),

renamed as (

    select
        product_id_a,
        product_id_b,
        as_of_date,
        correlation,
        n_obs,
        return_currency,
        loaded_at
    from source

)

select * from renamed
