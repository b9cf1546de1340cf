"""Silver liquidity: per product and 5-minute bucket, the time-weighted spread and the depth near mid, from the
collector's order-book snapshots (bronze/order_book, etl/stream/book.py).

`build_liquidity()` takes the files the bronze order-book Delta table gained since the bronze version its last build
recorded in its own commit (etl/silver/increments.py: no state file) and recomputes each touched (product, date)
partition from all its files:
1. one snapshot = the rows of one (product, snapshot_at); mid = (best bid + best ask) / 2, spread_bps =
   (best ask - best bid) / mid * 1e4; a snapshot without both sides, or crossed (best bid >= best ask: a removal
   never came, or an auction; its spread would be negative), is left out (counted),
2. each snapshot holds from its `book_time` until the next snapshot's or the end of its bucket, whichever is first
   (the last of a partition: until the end of its bucket); `spread_bps` and the depths are averages weighted by
   that time (equal weights when every hold is zero),
3. depth within 10/50/100 bp of mid, each side, in base units: the quantity of the levels priced within that
   distance of the snapshot's mid. Only the recorded levels count (the top `stream_book_depth`): `reach_bps`
   is the smallest distance from mid to the deepest recorded level on either side in the bucket; a band wider
   than it is a lower bound,
4. the bucket's last snapshot is kept whole (`bid_prices`, `bid_quantities`, `ask_prices`, `ask_quantities`,
   best first): the recorded book the liquidity-adjusted VaR walks (etl/risk/liquidity.py),
5. commit the touched partitions of the Delta table `silver/liquidity_5m` (one file per partition, one commit with
   the bronze version read).
A bronze file that does not read whole is set aside (etl.candles `set_aside`, `remove`: copied to
bronze/quarantined_files/ with its reason, taken out of the table) and its day built from the other snapshots
(streamed data cannot be fetched again).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from etl import candles
from etl.integrity import CorruptFileError
from etl.lake import Lake
from etl.settings import Settings, get_settings
from etl.silver import increments
from etl.silver.trade_bars import BAR_US
from etl.storage import Store, get_store
from etl.stream.sinks import BOOK_DIR, BOOK_SCHEMA

log = logging.getLogger(__name__)

LIQUIDITY_DIR = "silver/liquidity_5m"
BANDS_BPS = (10, 50, 100)
DEPTH_COLUMNS = tuple(f"{side}_depth_{b}bp" for side in ("bid", "ask") for b in BANDS_BPS)
_LIST = pa.list_(pa.float64())
LIQUIDITY_SCHEMA = pa.schema([
    ("bucket_start", pa.timestamp("us", tz="UTC")), ("n_snapshots", pa.int64()), ("mid", pa.float64()),
    ("spread_bps", pa.float64()), *((c, pa.float64()) for c in DEPTH_COLUMNS), ("reach_bps", pa.float64()),
    ("bid_prices", _LIST), ("bid_quantities", _LIST), ("ask_prices", _LIST), ("ask_quantities", _LIST)])
BRONZE_SCHEMA = pa.schema([*BOOK_SCHEMA, *(pa.field(k, pa.string()) for k in increments.KEYS)])


@dataclass
class LiquiditySummary:
    files: int = 0
    partitions: int = 0
    snapshots: int = 0
    one_sided: int = 0          # snapshots without a bid or an ask: left out
    crossed: int = 0            # snapshots whose best bid >= best ask: left out
    buckets: int = 0
    bad_files: list[str] = field(default_factory=list)  # unreadable bronze files set aside (where they went)

    def __str__(self) -> str:
        return (f"liquidity: {self.files} new bronze book file(s), {self.partitions} partition(s), "
                f"{self.snapshots:,} snapshot(s) ({self.one_sided:,} one-sided, {self.crossed:,} crossed: left out), "
                f"{self.buckets:,} buckets"
                + (f"; SET ASIDE {len(self.bad_files)} unreadable bronze book file(s): {', '.join(self.bad_files)}"
                   if self.bad_files else ""))


def snapshot_measures(levels: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One row per snapshot of one product's book rows (snapshot_at, book_time_us, side, level, price, quantity):
    book_time_us, mid, spread_bps, the depths, reach_bps and the level lists; one-sided and crossed snapshots
    dropped (returns the measures and how many were crossed)."""
    rows, crossed = [], 0
    for _, snap in levels.groupby("snapshot_at", sort=True):
        bid = snap[snap["side"] == "bid"].sort_values("level")
        ask = snap[snap["side"] == "offer"].sort_values("level")
        if bid.empty or ask.empty:
            continue
        bp, bq, ap, aq = (s[c].to_numpy(dtype=float) for s, c in
                          ((bid, "price"), (bid, "quantity"), (ask, "price"), (ask, "quantity")))
        if bp[0] >= ap[0]:
            crossed += 1
            continue
        mid = (bp[0] + ap[0]) / 2
        row = {"book_time_us": int(snap["book_time_us"].iloc[0]), "mid": mid, "spread_bps": (ap[0] - bp[0]) / mid * 1e4,
               "reach_bps": min(mid - bp[-1], ap[-1] - mid) / mid * 1e4,
               "bid_prices": bp, "bid_quantities": bq, "ask_prices": ap, "ask_quantities": aq}
        bid_bps, ask_bps = (mid - bp) / mid * 1e4, (ap - mid) / mid * 1e4
        for b in BANDS_BPS:  # a level on the band's edge is inside it (1e-9 bp: decimal prices in binary floats)
            row[f"bid_depth_{b}bp"] = float(bq[bid_bps <= b + 1e-9].sum())
            row[f"ask_depth_{b}bp"] = float(aq[ask_bps <= b + 1e-9].sum())
        rows.append(row)
    return pd.DataFrame(rows), crossed


def liquidity_buckets(snaps: pd.DataFrame) -> pd.DataFrame:
    """5-minute buckets of one product's snapshot measures (see the module docstring, 2-4)."""
    s = snaps.sort_values("book_time_us", kind="stable").reset_index(drop=True)
    t = s["book_time_us"].to_numpy()
    bucket = t // BAR_US
    end = (bucket + 1) * BAR_US
    nxt = np.append(t[1:], np.iinfo(np.int64).max)
    s["w"] = (np.minimum(nxt, end) - t).astype(float)
    s["bucket"] = bucket
    out = []
    for b, g in s.groupby("bucket", sort=True):
        w = g["w"].to_numpy() if g["w"].sum() > 0 else np.ones(len(g))
        last = g.iloc[-1]
        out.append({"bucket_start_us": int(b) * BAR_US, "n_snapshots": len(g), "mid": float(last["mid"]),
                    **{c: float(np.average(g[c], weights=w)) for c in ("spread_bps", *DEPTH_COLUMNS)},
                    "reach_bps": float(g["reach_bps"].min()),
                    **{c: last[c].tolist() for c in ("bid_prices", "bid_quantities", "ask_prices", "ask_quantities")}})
    return pd.DataFrame(out)


def build_liquidity(settings: Settings | None = None, full_refresh: bool = False) -> LiquiditySummary:
    """Bring silver liquidity up to date with the bronze order-book snapshots."""
    settings = settings or get_settings()
    store = get_store(settings)
    lake = Lake.of(store, settings)
    summary = LiquiditySummary()
    bronze = increments.increment(lake, BOOK_DIR, LIQUIDITY_DIR, full_refresh)
    touched = increments.touched(bronze.new, BOOK_DIR)
    summary.files = len(bronze.new)
    parts, gone = {}, []
    for product, day in touched:
        files = increments.files_of(bronze.files, BOOK_DIR, product, day)
        try:
            levels = read_book(store, files)
        except (CorruptFileError, pa.ArrowException, OSError, ValueError):
            bad = candles.set_aside_unreadable(store, files)
            if not bad:
                raise  # every file reads whole: not a corrupt file
            summary.bad_files += bad.values()
            gone += bad
            levels = read_book(store, [f for f in files if f not in bad])
        snaps, crossed = snapshot_measures(levels)
        summary.snapshots += levels["snapshot_at"].nunique()
        summary.crossed += crossed
        summary.one_sided += levels["snapshot_at"].nunique() - len(snaps) - crossed
        buckets = liquidity_buckets(snaps) if len(snaps) else pd.DataFrame(columns=["bucket_start_us"])
        parts[(product, day)] = _table(buckets)
        summary.partitions += 1
        summary.buckets += len(buckets)
    candles.remove(store, lake, gone, BOOK_DIR, BRONZE_SCHEMA)
    if bronze.new:  # the partitions' new files and the bronze version read, in one commit
        increments.commit(store, lake, LIQUIDITY_DIR, LIQUIDITY_SCHEMA, parts, bronze.version)
    log.info("silver: %s", summary)
    return summary


def read_book(store: Store, files: list[str]) -> pd.DataFrame:
    columns = ["side", "level", "price", "quantity", "book_time", "snapshot_at"]
    # no file: the partition's only one was set aside
    df = (store.read_files(BOOK_DIR, files, columns=columns) if files else
          BRONZE_SCHEMA.empty_table().select(columns)).to_pandas()
    df["book_time_us"] = df["book_time"].astype("datetime64[us, UTC]").astype("int64")
    return df


def _table(buckets: pd.DataFrame) -> pa.Table:
    if buckets.empty:
        return LIQUIDITY_SCHEMA.empty_table()
    cols = {"bucket_start": pa.array(buckets["bucket_start_us"].to_numpy(dtype=np.int64)).cast(
        LIQUIDITY_SCHEMA.field("bucket_start").type)}
    for f in LIQUIDITY_SCHEMA:
        if f.name != "bucket_start":
            cols[f.name] = pa.array(buckets[f.name].tolist(), f.type)
    return pa.table(cols, schema=LIQUIDITY_SCHEMA)
