-- One row per portfolio per 5-minute bucket per limit type in breach, plus the bucket where a breach cleared.
-- Rebuilt from raw by every build, as fact_intraday_risk.
with intraday_limit_breaches as (

    select * from {{ ref('stg_risk__intraday_limit_breaches') }}

),

final as (

    select
        *,
        status = 'cleared' as is_cleared,
        case when status = 'cleared' then bucket_start end as cleared_at
    from intraday_limit_breaches

)

select {{ contract_columns() }}
from final
