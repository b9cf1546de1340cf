-- One row per portfolio per 5-minute bucket: the intraday revaluation, rebuilt from raw by every
-- build: a rerun of an interval replaces its rows in raw, and a row gone from raw is gone from gold.
with intraday_risk as (

    select * from {{ ref('stg_risk__intraday_risk') }}

),

final as (

    select
        *,
        drawdown as drawdown_from_peak,
        stale_products > 0 as has_stale_prices
    from intraday_risk

)

select {{ contract_columns() }}
from final
