with source as (

    select * from {{ source('factors', 'factor_returns') }}

),

renamed as (

    select
        factor_name,
        bucket_start,
        factor_return,
        loaded_at
    from source

)

select * from renamed
