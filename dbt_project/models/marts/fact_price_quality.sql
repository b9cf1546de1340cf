-- One row per product per granularity per flagged candle: prints the market-data quality gate kept out of the
-- bars (decision excluded) or an operator accepted in price_overrides.csv (accepted_by_override, with who, when, why).
with price_quality as (

    select * from {{ ref('stg_silver__price_quality') }}

),

final as (

    select
        *,
        cast(bucket_start at time zone 'UTC' as date) as flag_date
    from price_quality

)

select {{ contract_columns() }}
from final
