"""The silver benchmark's baseline: one DuckDB script doing silver's job on the same bronze.

    python bench/silver_duckdb.py DATA_DIR OUT_DIR

Reads the hive-partitioned bronze candles under DATA_DIR/bronze/candles, keeps the latest ingestion per
(product, granularity, bucket_start), drops rows that break the basic validity rules (finite values, positive
prices, low <= open, close <= high, non-negative volume, not in the future), and writes 5-minute bars (from
1-minute candles) and daily bars, each with OHLC, volume, VWAP, candle count, completeness and first/last candle
time, partitioned by product and date (daily: by product and year) under OUT_DIR. Less than `etl silver` does (no
quarantine files, no state, no finest-granularity choice, no lock), which favours the baseline.
"""

from __future__ import annotations

import sys

SQL = """
set TimeZone = 'UTC';
create temp table clean as
select product_id, granularity, bucket_start, open, high, low, close, volume
from read_parquet('{bronze}/*/*/*.parquet', hive_partitioning = true)
where granularity = 60
qualify row_number() over (partition by product_id, granularity, bucket_start
                           order by ingested_at desc, batch_id desc) = 1
    and isfinite(open) and isfinite(high) and isfinite(low) and isfinite(close) and isfinite(volume)
    and open > 0 and high > 0 and low > 0 and close > 0
    and low <= open and low <= close and high >= open and high >= close and volume >= 0
    and bucket_start <= now();

copy (
    select product_id, strftime(time_bucket(interval 1 day, bucket_start), '%Y-%m-%d') as date,
           time_bucket(interval 5 minutes, bucket_start) as bucket_start,
           arg_min(open, bucket_start) as open, max(high) as high, min(low) as low,
           arg_max(close, bucket_start) as close, sum(volume) as volume,
           sum(volume * (high + low + close) / 3) / sum(volume) as vwap, count(*) as n_candles,
           count(*) * 60 = 300 as is_complete,
           min(bucket_start) as first_candle_at, max(bucket_start) as last_candle_at
    from clean group by all order by product_id, bucket_start
) to '{out}/bars_5m' (format parquet, compression zstd, partition_by (product_id, date));

copy (
    select product_id, year(price_date) as year, *exclude (product_id) from (
        select product_id, cast(time_bucket(interval 1 day, bucket_start) as date) as price_date,
               arg_min(open, bucket_start) as open, max(high) as high, min(low) as low,
               arg_max(close, bucket_start) as close, sum(volume) as volume,
               sum(volume * (high + low + close) / 3) / sum(volume) as vwap, count(*) as n_candles,
               count(*) * 60 = 86400 as is_complete,
               min(bucket_start) as first_candle_at, max(bucket_start) as last_candle_at
        from clean group by all
    ) order by product_id, price_date
) to '{out}/bars_1d' (format parquet, compression zstd, partition_by (product_id, year));
"""


def main(data_dir: str, out_dir: str) -> None:
    from pathlib import Path

    import duckdb

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute(SQL.format(bronze=f"{data_dir}/bronze/candles", out=out_dir))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
