-- Return anomalies flagged on the as-of day (robust z-score beyond the threshold), largest first.
select
    anomalies.bar_date,
    anomalies.bucket_start,
    anomalies.product_id,
    round((anomalies.return_value)::numeric, 6) as return_value,
    round((anomalies.robust_z)::numeric, 2) as robust_z,
    round((anomalies.threshold)::numeric, 2) as threshold,
    round((anomalies.close)::numeric, 8) as close
from gold.fact_anomalies as anomalies
where anomalies.bar_date = coalesce(nullif(:'as_of', '')::date, (select max(bar_date) from gold.fact_anomalies))
order by abs(anomalies.robust_z) desc, anomalies.product_id
