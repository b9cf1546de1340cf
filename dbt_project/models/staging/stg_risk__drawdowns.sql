with source as (

    select * from {{ source('risk', 'drawdowns') }}

),

renamed as (

    select
        entity_type,
        entity_id,
        as_of_date,
        max_drawdown,
        peak_date,
        trough_date,
        recovery_date,
        window_start,
        window_end,
        loaded_at
    from source

)

select * from renamed
