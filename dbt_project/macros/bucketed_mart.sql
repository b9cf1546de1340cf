{#- A mart that is its staging model, one row per staging row, plus the UTC day of `bucket_start` as `date_column`
    (the day a BI tool filters and partitions on). Used by fact_price_bars, fact_anomalies and fact_price_quality. -#}
{% macro bucketed_mart(staging_model, date_column) -%}
with staged as (

    select * from {{ ref(staging_model) }}

),

final as (

    select
        *,
        cast(bucket_start at time zone 'UTC' as date) as {{ date_column }}
    from staged

)

select {{ contract_columns() }}
from final
{%- endmacro %}
