-- Return anomalies flagged on the as-of day (robust z-score beyond the threshold), largest first.
with params as (
    select coalesce(nullif(:'as_of', '')::date, (select max(bar_date) from gold.fact_anomalies)) as as_of
)

select
    anomalies.bar_date,
    anomalies.bucket_start,
    anomalies.product_id,
    anomalies.return_value,
    anomalies.robust_z,
    anomalies.threshold,
    anomalies.close
from gold.fact_anomalies as anomalies
inner join params
    on anomalies.bar_date = params.as_of
order by abs(anomalies.robust_z) desc, anomalies.product_id
