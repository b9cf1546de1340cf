-- One row per product per 5-minute bucket. Incremental: each run merges the raw rows loaded since the last run
-- (delete+insert on the key), so a re-aggregated silver partition replaces its bars.
{{ bucketed_mart('stg_silver__bars_5m', 'bar_date') }}
