-- One row per portfolio per day: daily, month-to-date and cumulative PnL in the portfolio's base currency.
-- cumulative_pnl is unknown (NULL) from the first day whose PnL is unknown (NULL daily_pnl: an unpriced holding),
-- as the engine's MTD, never the sum of the other days; a NULL on the book's first day in gold (no previous close)
-- is no PnL before the history.
with pnl_daily as (

    select
        *,
        daily_pnl is null
            and as_of_date > min(as_of_date) over (partition by portfolio_id) as is_unknown
    from {{ ref('stg_risk__pnl_daily') }}

),

final as (

    select
        *,
        case when not bool_or(is_unknown) over running then sum(coalesce(daily_pnl, 0)) over running end
            as cumulative_pnl
    from pnl_daily
    window running as (partition by portfolio_id order by as_of_date rows between unbounded preceding and current row)

)

select {{ contract_columns() }}
from final
