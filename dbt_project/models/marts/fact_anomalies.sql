-- One row per product per flagged bucket: returns whose robust z-score passed the anomaly threshold.
{{ bucketed_mart('stg_risk__anomalies', 'bar_date') }}
