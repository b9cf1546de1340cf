-- One row per product per granularity per flagged candle: prints the market-data quality gate kept out of the
-- bars (decision excluded) or an operator accepted in price_overrides.csv (accepted_by_override, with who, when, why).
{{ bucketed_mart('stg_silver__price_quality', 'flag_date') }}
