with source as (

    select * from {{ source('reference', 'exchanges') }}

),

renamed as (

    select
        exchange_id,
        name,
        api_base_url,
        timezone,
        loaded_at
    from source

)

select * from renamed
