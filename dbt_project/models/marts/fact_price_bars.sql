-- One row per product per 5-minute bucket. Incremental: each run merges the raw rows loaded since the last run
-- (delete+insert on the key), so a re-aggregated silver partition replaces its bars.
with bars_5m as (

    select * from {{ ref('stg_silver__bars_5m') }}

),

final as (

    select
        *,
        cast(bucket_start at time zone 'UTC' as date) as bar_date
    from bars_5m
    {{ loaded_since_last_build() }}

)

select {{ contract_columns() }}
from final
