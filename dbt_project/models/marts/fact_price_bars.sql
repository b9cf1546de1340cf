-- One row per product per 5-minute bucket. Incremental: each run merges the raw rows loaded since the last run
-- (delete+insert on the key), so a re-aggregated silver partition replaces its bars.
{{
    config(
        materialized='incremental',
        unique_key=['product_id', 'bucket_start'],
        incremental_strategy='delete+insert',
        on_schema_change='append_new_columns',
    )
}}

with bars_5m as (

    select * from {{ ref('stg_silver__bars_5m') }}

),

final as (

    select
        *,
        cast(bucket_start at time zone 'UTC' as date) as bar_date
    from bars_5m
    {% if is_incremental() %}
    where loaded_at > (select coalesce(max(loaded_at), '-infinity'::timestamptz) from {{ this }})
    {% endif %}

)

select {{ contract_columns() }}
from final
