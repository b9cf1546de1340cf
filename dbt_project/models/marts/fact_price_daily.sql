-- One row per product per UTC day, with the close-to-close return versus the product's previous daily bar.
with bars_1d as (

    select * from {{ ref('stg_silver__bars_1d') }}

),

with_returns as (

    select
        *,
        lag(close) over (partition by product_id order by price_date) as previous_close
    from bars_1d

),

final as (

    select
        *,
        close / nullif(previous_close, 0) - 1 as daily_return
    from with_returns

)

select {{ contract_columns() }}
from final
