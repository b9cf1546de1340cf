-- One row per product per flagged day: daily returns whose robust z-score passed the anomaly threshold
-- (the 5-minute anomalies are in fact_anomalies).
with anomalies_daily as (

    select * from {{ ref('stg_risk__anomalies_daily') }}

),

final as (

    select
        *,
        case when robust_z > 0 then 'up' else 'down' end as direction,
        as_of_date as flagged_as_of_date
    from anomalies_daily

)

select {{ contract_columns() }}
from final
