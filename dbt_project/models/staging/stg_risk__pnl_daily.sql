with source as (

    select * from {{ source('risk', 'pnl_daily') }}

),

renamed as (

    select
        portfolio_id,
        as_of_date,
        daily_pnl,
        mtd_pnl,
        daily_return,
        base_currency,
        loaded_at
    from source

)

select * from renamed
