-- One row per product per flagged bucket: returns whose robust z-score passed the anomaly threshold.
with anomalies as (

    select * from {{ ref('stg_risk__anomalies') }}

),

final as (

    select
        product_id,
        bucket_start,
        cast(bucket_start at time zone 'UTC' as date) as bar_date,
        return_value,
        robust_z,
        close,
        threshold,
        scale_method
    from anomalies

)

select * from final
