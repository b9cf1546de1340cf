-- One row per portfolio per day: daily, month-to-date and cumulative PnL in the portfolio's base currency.
with pnl_daily as (

    select * from {{ ref('stg_risk__pnl_daily') }}

),

final as (

    select
        *,
        sum(coalesce(daily_pnl, 0)) over (
            partition by portfolio_id
            order by as_of_date
            rows between unbounded preceding and current row
        ) as cumulative_pnl
    from pnl_daily

)

select {{ contract_columns() }}
from final
