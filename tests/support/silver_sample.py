"""Silver daily and 5-minute bars from closes, for risk runs in tests and benchmarks (etl.silver.bars schemas)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from etl.silver.bars import BARS_1D_SCHEMA, BARS_5M_SCHEMA


def write_daily_bars(root: Path, closes: pd.DataFrame, quotes: dict[str, str], *, spread: float = 0.0,
                     volume: float = 1.0, n_candles: int = 1440, source_granularity: int = 86400) -> None:
    """closes (day x product) as `{root}/silver/bars_1d/product_id=P/year=Y/part-0.parquet` (replaced if there):
    open = close, high/low = close x (1 +/- spread), vwap = close, complete bars in the product's quote currency."""
    for product in closes.columns:
        c = closes[product].to_numpy()
        n = len(c)
        table = pa.table({
            "price_date": pa.array(closes.index.date, pa.date32()), "open": c, "high": c * (1 + spread),
            "low": c * (1 - spread), "close": c, "volume": np.full(n, volume), "vwap": c,
            "n_candles": np.full(n, n_candles), "is_complete": np.ones(n, bool), "quote_currency": [quotes[product]] * n,
            "first_candle_at": pa.array([None] * n, pa.timestamp("us", tz="UTC")),
            "last_candle_at": pa.array([None] * n, pa.timestamp("us", tz="UTC")),
            "source_granularity": np.full(n, source_granularity)}).cast(BARS_1D_SCHEMA)
        for year in sorted(set(closes.index.year)):
            folder = root / "silver" / "bars_1d" / f"product_id={product}" / f"year={year}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(table.filter(pa.array(closes.index.year == year)), folder / "part-0.parquet")


def write_5m_bars(root: Path, product: str, quote: str, buckets: pd.DatetimeIndex, closes: np.ndarray) -> None:
    """One product's 5-minute bars (bucket starts, closes) as `{root}/silver/bars_5m/product_id=P/date=D/part-0.parquet`
    per UTC day (replaced if there): flat bars of 5 one-minute candles, volume 1."""
    m = len(closes)
    table = pa.table({
        "bucket_start": pa.array(buckets), "open": closes, "high": closes, "low": closes, "close": closes,
        "volume": np.ones(m), "vwap": closes, "n_candles": np.full(m, 5), "is_complete": np.ones(m, bool),
        "quote_currency": [quote] * m, "first_candle_at": pa.array(buckets), "last_candle_at": pa.array(buckets),
        "source_granularity": np.full(m, 60)}).cast(BARS_5M_SCHEMA)
    for day in sorted(set(buckets.date)):
        folder = root / "silver" / "bars_5m" / f"product_id={product}" / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.filter(pa.array(buckets.date == day)), folder / "part-0.parquet")
