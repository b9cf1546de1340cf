-- One row per entity (portfolio or asset) per as-of day: the maximum drawdown over the risk lookback, with the
-- peak, trough and recovery days. portfolio_id / product_id repeat entity_id for the matching entity_type, so the
-- fact joins dim_portfolio and dim_symbol directly.
with drawdowns as (

    select * from {{ ref('stg_risk__drawdowns') }}

),

final as (

    select
        *,
        case when entity_type = 'portfolio' then entity_id end as portfolio_id,
        case when entity_type = 'asset' then entity_id end as product_id,
        -- NULL when there was no drawdown: "recovered" only means something after a fall
        case when max_drawdown < 0 then recovery_date is not null end as is_recovered,
        trough_date - peak_date as drawdown_days,
        recovery_date - trough_date as recovery_days
    from drawdowns

)

select {{ contract_columns() }}
from final
