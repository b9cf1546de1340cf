-- One row per portfolio per 5-minute bucket: the intraday revaluation. Incremental (delete+insert on the key):
-- each intraday run merges the raw rows loaded since the last build, so a rerun of an interval replaces its rows.
with intraday_risk as (

    select * from {{ ref('stg_risk__intraday_risk') }}

),

final as (

    select
        *,
        drawdown as drawdown_from_peak,
        stale_products > 0 as has_stale_prices
    from intraday_risk
    {{ loaded_since_last_build() }}

)

select {{ contract_columns() }}
from final
