-- One row per product per flagged bucket: returns whose robust z-score passed the anomaly threshold.
with anomalies as (

    select * from {{ ref('stg_risk__anomalies') }}

),

final as (

    select
        *,
        cast(bucket_start at time zone 'UTC' as date) as bar_date
    from anomalies

)

select {{ contract_columns() }}
from final
