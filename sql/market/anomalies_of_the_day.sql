-- Return anomalies flagged on the as-of day (robust z-score beyond the threshold), largest first.
select
    anomalies.bar_date,
    anomalies.bucket_start,
    anomalies.product_id,
    anomalies.return_value,
    anomalies.robust_z,
    anomalies.threshold,
    anomalies.close
from gold.fact_anomalies as anomalies
where anomalies.bar_date = coalesce(nullif(:'as_of', '')::date, (select max(bar_date) from gold.fact_anomalies))
order by abs(anomalies.robust_z) desc, anomalies.product_id
