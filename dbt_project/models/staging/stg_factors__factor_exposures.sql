with source as (

    select * from {{ source('factors', 'factor_exposures') }}

),

renamed as (

    select
        product_id,
        factor_name,
        bucket_start,
        beta,
        r_squared,
        r_squared_adj,
        n_obs,
        alpha,
        rank_deficient,
        as_of_date,
        loaded_at
    from source

)

select * from renamed
