"""Silver trade bars: 5-minute bars from the streamed trades, with a true VWAP and trade counts, reconciled
against the candle bars of the same buckets.

`build_trade_bars()` takes the files the bronze trades Delta table (`bronze/trades`) gained since the bronze version
its last build recorded in its own commit (etl/silver/increments.py: no state file), and recomputes each touched
(product, date) partition (and the product's partition before a partition new to bronze: its last bar is closed
now; and the product's partition after a touched partition: its first trades are judged after the touched day's
last ones) from
all its files at the bronze version it reads now:
1. deduplicate by (product_id, trade_id), keeping the first received (reconnect snapshots and duplicated
   messages repeat trades); copies of one trade id that disagree on its price, size or time are none of them a
   bar's trade (which is the trade is unknown): left out, counted as invalid, and their bars not complete,
2. parse price and size; a size is its whole base units (float64, summed exactly below 2**53) and its fraction in
   integer units of 1e-8 (sizes carry at most 8 decimals), so volumes add up exactly and never overflow (one int64
   of 1e-8 units wrapped at 9.2e10 base units, a meme coin's $1M trade); rows whose price, size or time is not a
   finite number, or not positive, are counted and left out; so are bad prints (`suspect_prints`: a trade whose
   price jumps from the previous trade and the next comes straight back, the latest trade jumping with no later
   trade yet, or a first trade with nothing before it and the next one jumping; the day's first and last trades
   are judged with the last trades of the product's partition before (the day before, or the last day it traded
   before a day without trades) and the next partition's first one), counted and named in the
   summary and the log,
3. order by (time, trade_id as a number: "999" before "1000") and fold per 5-minute bucket: open = first price, high/low = max/min, close = last,
   volume = sum(size), vwap = sum(price * size) / sum(size), n_trades, n_candles = minutes with a trade,
   is_complete = all five minutes traded, a later trade exists (the bar is closed; in any partition of the
   product: the day's 23:55 bar is closed by the next partition's first trade) and no feed hole cuts into the
   bucket (see `holes`: a lost message's trades are gone for good, so such a bar is built but never complete;
   the runs of the next partition count: a stream going on past midnight leaves the day's end whole),
   and no bar of a day that lost a bronze file is: a file that does not read whole is set aside (etl.candles
   `set_aside`, `remove`: copied to bronze/quarantined_files/ with its reason, taken out of the table) and the
   day built from the rest, but streamed trades cannot be fetched again, so its trades are lost at unknown times
   (a copy set aside marks the day on every later build, a full refresh too),
4. commit the touched partitions of the Delta table `silver/trade_bars_5m` (one file per partition, one commit
   with the bronze version read) with the columns of the candle bars (`first_candle_at`/`last_candle_at` hold the
   first/last trade time, `source_granularity` 0 = trades) plus `n_trades`.
`reconcile()` compares complete trade bars with complete candle bars of the same buckets: OHLC equal, volume
equal (to 1e-9 relative), and reports the VWAP difference (trade VWAP minus the candle bars' typical-price VWAP) in
basis points. On the simulator OHLC and volume are equal by construction (etl/simulator/trades.py).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from etl import candles
from etl.errors import some
from etl.integrity import CorruptFileError
from etl.lake import Lake
from etl.reference_set import Reference
from etl.settings import Settings, get_settings
from etl.silver import increments
from etl.silver.bars import BARS_5M_SCHEMA
from etl.silver.price_quality import JUMP_FLOOR_INTRADAY, REVERT_FRACTION
from etl.storage import Store, get_store
from etl.stream.sinks import GAPS_DIR, TRADES_DIR, TRADES_SCHEMA

log = logging.getLogger(__name__)

TRADE_BARS_DIR = "silver/trade_bars_5m"
CANDLE_BARS_DIR = "silver/bars_5m"
RECONCILIATION_FILE = "silver/_quality/trade_bars_reconciliation.json"
LOST = "lost_partitions"  # commit metadata: the partitions built as having lost a bronze file ("PRODUCT/DATE")
UNITS = 100_000_000
BAR_US = 300 * 1_000_000
TRADE_BARS_SCHEMA = BARS_5M_SCHEMA.append(pa.field("n_trades", pa.int64()))
BRONZE_SCHEMA = pa.schema([*TRADES_SCHEMA, *(pa.field(k, pa.string()) for k in increments.KEYS)])


@dataclass
class TradeBarsSummary:
    files: int = 0                 # new bronze trade files taken in
    partitions: int = 0            # (product, date) partitions rebuilt
    trades_in: int = 0             # rows read (duplicates included)
    duplicates: int = 0            # repeated (product_id, trade_id) dropped
    invalid: int = 0               # rows whose price, size or time is not a finite number (price, size > 0)
    bars: int = 0
    cut: int = 0                   # bars a feed hole cuts into (not complete)
    reconciliation: dict = field(default_factory=dict)
    bad_files: list[str] = field(default_factory=list)  # unreadable bronze files set aside (where they went)
    suspect: list[str] = field(default_factory=list)    # bad prints left out of the bars (product, time, evidence)

    def __str__(self) -> str:
        r = self.reconciliation
        line = (f"  reconciled {r.get('compared', 0)} complete bar(s) with the candle bars: "
                f"OHLC mismatches {r.get('ohlc_mismatches', 0)}, volume mismatches {r.get('volume_mismatches', 0)}, "
                f"VWAP difference mean {r.get('vwap_diff_bps_mean', 0.0):+.2f} bp, "
                f"max |.| {r.get('vwap_diff_bps_max_abs', 0.0):.2f} bp") if r else "  nothing to reconcile"
        return (f"trade bars: {self.files} new bronze file(s), {self.partitions} partition(s), {self.trades_in:,} "
                f"trades in ({self.duplicates:,} duplicates, {self.invalid:,} invalid), {self.bars:,} bars ({self.cut:,} "
                f"cut by a feed hole: not complete)\n{line}"
                + (f"\n  SET ASIDE {len(self.bad_files)} unreadable bronze trades file(s), their days' bars not "
                   f"complete: {', '.join(self.bad_files)}" if self.bad_files else "")
                + (f"\n  SUSPECT {len(self.suspect)} trade print(s) left out of the bars: {some(self.suspect)}"
                   if self.suspect else ""))


def _in_order(trades: pd.DataFrame) -> pd.DataFrame:
    """The trades in exchange order: time, then trade id as a number (by length first, so "999" before "1000")."""
    return trades.assign(id_len=trades["trade_id"].str.len()).sort_values(["ts_us", "id_len", "trade_id"],
                                                                            kind="stable")


def suspect_prints(trades: pd.DataFrame, product: str = "", before: pd.DataFrame | None = None,
                   after: pd.DataFrame | None = None) -> tuple[np.ndarray, list[str]]:
    """(mask over `trades`' rows of the bad prints, one description each), one product's valid trades (as
    `trade_bars` takes them) in exchange order (`_in_order`). The candle gate's rules (etl/silver/price_quality.py) on
    consecutive trades, with the intraday floor T = ln 1.25: a spike (the price jumps beyond T from the previous
    trade and the next trade comes straight back: opposite legs beyond T, back within REVERT_FRACTION of the smaller),
    an unconfirmed jump (the latest trade jumps beyond T, unless it is a spike's way back: held out until a later
    trade confirms it) and an unanchored first trade (the first, whose next trade jumps beyond T: with nothing before
    it, a bad first print cannot be told from a real one). `before`/`after`: the trades just before and after
    `trades` (the last ones of the day before, the first ones of the product's next partition; same columns, in
    exchange order), which judge the day's first and last trades and are not judged themselves. A spike of two
    trades or more is not caught (as for candles)."""
    lo = 0 if before is None else len(before)
    own = len(trades)
    t = pd.concat([x[["ts_us", "trade_id", "price"]] for x in (before, trades, after) if x is not None and len(x)],
                  ignore_index=True) if own else trades
    n = len(t)
    if n < 2:
        return np.zeros(own, dtype=bool), []
    price = t["price"].to_numpy(dtype="float64")
    step = np.diff(np.log(price))
    r_in, r_out = np.r_[np.nan, step], np.r_[step, np.nan]
    with np.errstate(invalid="ignore"):
        a_in, a_out = np.abs(r_in), np.abs(r_out)
        spike = ((a_in > JUMP_FLOOR_INTRADAY) & (a_out > JUMP_FLOOR_INTRADAY) & (np.sign(r_in) != np.sign(r_out))
                 & (np.abs(r_in + r_out) <= REVERT_FRACTION * np.minimum(a_in, a_out)))
        prev_in = np.r_[np.nan, r_in[:-1]]
        way_back = ((np.abs(prev_in) > JUMP_FLOOR_INTRADAY) & (np.sign(prev_in) != np.sign(r_in))
                    & (np.abs(prev_in + r_in) <= REVERT_FRACTION * np.minimum(np.abs(prev_in), a_in)))
    unconfirmed = np.zeros(n, dtype=bool)
    unconfirmed[-1] = a_in[-1] > JUMP_FLOOR_INTRADAY and not way_back[-1]
    unanchored = np.zeros(n, dtype=bool)
    unanchored[0] = a_out[0] > JUMP_FLOOR_INTRADAY
    bad = (spike | unconfirmed | unanchored)[lo:lo + own]
    told = []
    for i in np.flatnonzero(bad) + lo:  # a handful
        when = pd.Timestamp(int(t["ts_us"].iat[i]), unit="us", tz="UTC").isoformat()
        if unanchored[i] and not spike[i]:
            legs = (f"no earlier trade, then {r_out[i]:+.3f} log to the next trade's "
                    f"{price[i + 1]:.8g}")
        else:
            then = (f"then {r_out[i]:+.3f} back to {price[i + 1]:.8g}" if spike[i] else "no later trade yet")
            legs = f"{r_in[i]:+.3f} log from the previous trade's {price[i - 1]:.8g}, {then}"
        told.append(f"{product} trade {t['trade_id'].iat[i]} at {when}: price {price[i]:.8g}, {legs}; "
                    f"threshold {JUMP_FLOOR_INTRADAY:.3f}")
    return bad, told


def trade_bars(trades: pd.DataFrame, ordered: bool = False) -> pd.DataFrame:
    """5-minute bars of one product's deduplicated, valid trades (columns ts_us int64, trade_id, price, whole
    float64 and units int64: the size's whole base units and the rest in units of 1e-8, see `read_trades`);
    `ordered`: already in exchange order (`_in_order`).

    Returns bucket_start_us, open, high, low, close, volume, vwap, n_trades, n_candles, first_us, last_us,
    one row per bucket with a trade, ascending.
    """
    t = trades if ordered else _in_order(trades)
    ts, price, whole, rest = (t[c].to_numpy() for c in ("ts_us", "price", "whole", "units"))
    units = whole * UNITS + rest  # float64: exact below 2**53 units, and no overflow above
    bar = ts // BAR_US
    if not len(bar):
        return pd.DataFrame(columns=["bucket_start_us", "open", "high", "low", "close", "volume", "vwap",
                                     "n_trades", "n_candles", "first_us", "last_us"])
    starts = np.flatnonzero(np.concatenate([[True], bar[1:] != bar[:-1]]))
    ends = np.append(starts[1:], len(bar)) - 1
    volume_units = np.add.reduceat(whole, starts) * UNITS + np.add.reduceat(rest, starts)
    minute = ts // 60_000_000
    new_minute = np.concatenate([[True], (minute[1:] != minute[:-1]) | (bar[1:] != bar[:-1])])
    return pd.DataFrame({
        "bucket_start_us": bar[starts] * BAR_US, "open": price[starts], "high": np.maximum.reduceat(price, starts),
        "low": np.minimum.reduceat(price, starts), "close": price[ends], "volume": volume_units / UNITS,
        "vwap": np.add.reduceat(price * units, starts) / volume_units,
        "n_trades": ends - starts + 1, "n_candles": np.add.reduceat(new_minute.astype(np.int64), starts),
        "first_us": ts[starts], "last_us": ts[ends],
    })


@dataclass(frozen=True)
class Breaks:
    """Where the runs of a connection break (bronze/stream_gaps): `cuts` per connection, the sorted sequence numbers
    a new run starts at (a `sequence` gap's `expected`; a `rejected_trade` message's and the one after it), and
    `lost`, the (connection, sequence_num) of messages with a rejected trade: their other trades are kept but cover
    nothing."""

    cuts: dict[str, np.ndarray] = field(default_factory=dict)
    lost: frozenset[tuple[str, int]] = frozenset()


def sequence_breaks(lake: Lake) -> Breaks:
    gaps = lake.read(GAPS_DIR, columns=["kind", "connection_id", "expected"])
    if gaps is None:
        return Breaks()
    g = gaps.to_pandas()
    g = g[g["expected"].notna()].astype({"expected": np.int64})
    rejected = g[g["kind"] == "rejected_trade"]
    cuts = pd.concat([g.loc[g["kind"] == "sequence", ["connection_id", "expected"]],
                      rejected[["connection_id", "expected"]],
                      rejected.assign(expected=rejected["expected"] + 1)[["connection_id", "expected"]]])
    return Breaks({c: np.unique(e.to_numpy(dtype=np.int64)) for c, e in cuts.groupby("connection_id")["expected"]},
                  frozenset(zip(rejected["connection_id"], rejected["expected"].tolist(), strict=True)))


def runs(connection: np.ndarray, seq: np.ndarray, breaks: Breaks) -> np.ndarray:
    """Each row's run: "<connection>:<k>", k = its connection's cuts before it (`sequence_breaks`). A run is
    consecutive messages of one connection (the feed does not say which channel a gap's message was on)."""
    k = np.zeros(len(seq), dtype=np.int64)
    for conn in np.unique(connection):
        cut = breaks.cuts.get(conn)
        if cut is not None:
            mine = connection == conn
            k[mine] = np.searchsorted(cut, seq[mine], side="right")
    return np.char.add(np.char.add(connection.astype(str), ":"), k.astype(str))


def holes(ts_us: np.ndarray, run: np.ndarray, carried: set[str]) -> np.ndarray:
    """Feed-time spans (t1, t2), open, in which trades may be missing: (K, 2) int64.

    A run delivered every trade from its first trade time to its last (a run `carried` over from the previous
    day: from before this day); a disconnect, a stall or a lost message leaves a hole unless another run (a
    reconnect's trade snapshot, a second collector) spans it. The holes are the spaces before and between the
    union of the runs' spans."""
    if not len(ts_us):
        return np.zeros((0, 2), dtype=np.int64)
    spans = pd.DataFrame({"r": run, "t": ts_us}).groupby("r")["t"].agg(["min", "max"])
    spans.loc[spans.index.isin(list(carried)), "min"] = 0
    out, end = [], 0
    for start, stop in spans.sort_values("min").to_numpy():
        if start > end:
            out.append((end, start))
        end = max(end, stop)
    return np.array(out, dtype=np.int64).reshape(-1, 2)


def _runs_of(df: pd.DataFrame, breaks: Breaks) -> np.ndarray:
    return runs(df["connection_id"].fillna("").astype(str).to_numpy(),
                df["sequence_num"].fillna(-1).astype(np.int64).to_numpy(), breaks)


def read_trades(store: Store, files: list[str], breaks: Breaks | None = None,
                previous_day: list[str] | None = None, next_day: list[str] | None = None,
                ) -> tuple[pd.DataFrame, int, int, int, np.ndarray, int, pd.DataFrame, pd.DataFrame]:
    """Valid, deduplicated trades of `files`: (product_id, trade_id, ts_us, price, whole, units: the size's whole
    base units and the rest in units of 1e-8), rows in, duplicates,
    invalid, the feed holes of those rows (`holes`; `previous_day`: the files of the partition before, whose
    runs carry over; `next_day`: the files of the product's next partition, whose runs continue this day's),
    the first trade time of `next_day` (0: none), which closes this day's last bar, and the last two valid trades
    of `previous_day` and the first of `next_day` (ts_us, trade_id, price: `suspect_prints`' `before`, `after`)."""
    breaks = breaks or Breaks()
    columns = ["product_id", "trade_id", "price", "size", "time", "received_at", "connection_id", "sequence_num"]
    # no file: the partition's only one was set aside
    df = (store.read_files(TRADES_DIR, files, columns=columns) if files else
          BRONZE_SCHEMA.empty_table().select(columns)).to_pandas()
    rows_in = len(df)
    near = ["trade_id", "price", "size", "time", "connection_id", "sequence_num"]
    before, after = (store.read_files(TRADES_DIR, files, columns=near).to_pandas() if files else
                     BRONZE_SCHEMA.empty_table().select(near).to_pandas() for files in (previous_day, next_day))
    carried = set(_runs_of(before, breaks))
    feed = pd.concat([df[near], after], ignore_index=True)   # the runs go on into the next partition
    seen = pd.to_datetime(feed["time"], utc=True, errors="coerce", format="ISO8601")   # before deduplication
    ok = seen.notna().to_numpy()
    if breaks.lost:  # a message with a rejected trade covers nothing: its span is a hole
        ok = ok & ~np.fromiter(((c, q) in breaks.lost for c, q in zip(feed["connection_id"], feed["sequence_num"],
                                                                          strict=True)), bool, len(feed))
    timed = seen.notna().to_numpy()
    feed_us = np.zeros(len(feed), dtype=np.int64)
    feed_us[timed] = seen[timed].astype("datetime64[us, UTC]").astype("int64").to_numpy()
    gaps = holes(feed_us[ok], _runs_of(feed, breaks)[ok], carried)
    later = feed_us[len(df):][timed[len(df):]]
    later_us = int(later.min()) if len(later) else 0
    seen = seen.iloc[:len(df)].set_axis(df.index)
    df["product_id"] = df["product_id"].astype(str)
    # a trade id is one trade: copies that disagree on its price, size or time leave no telling which is the trade;
    # none of them is a bar's trade, and their bars are cut like a hole's (counted as invalid)
    parsed = pd.DataFrame({"product_id": df["product_id"], "trade_id": df["trade_id"],
                           "p": pd.to_numeric(df["price"], errors="coerce"),
                           "s": pd.to_numeric(df["size"], errors="coerce"), "t": seen})
    conflicting = (parsed.groupby(["product_id", "trade_id"], sort=False)[["p", "s", "t"]].transform("nunique")
                   > 1).any(axis=1).to_numpy()
    if conflicting.any():
        t = seen[conflicting].dropna().astype("datetime64[us, UTC]").astype("int64").to_numpy()
        gaps = np.concatenate([gaps, np.stack([t - 1, t + 1], axis=1)]).astype(np.int64)
        df = df[~conflicting]
    df = df.sort_values("received_at", kind="stable").drop_duplicates(["product_id", "trade_id"])
    duplicates = rows_in - int(conflicting.sum()) - len(df)
    price = pd.to_numeric(df["price"], errors="coerce")
    size = pd.to_numeric(df["size"], errors="coerce")
    ts = pd.to_datetime(df["time"], utc=True, errors="coerce", format="ISO8601")
    ok = price.gt(0) & size.gt(0) & np.isfinite(price) & np.isfinite(size) & ts.notna() & df["trade_id"].notna()
    whole = np.floor(size[ok].astype(float))
    out = pd.DataFrame({"product_id": df["product_id"][ok], "trade_id": df["trade_id"][ok],
                        "ts_us": ts[ok].astype("datetime64[us, UTC]").astype("int64"),
                        "price": price[ok].astype(float), "whole": whole,
                        "units": np.rint((size[ok] - whole) * UNITS).astype(np.int64)})
    return (out, rows_in, duplicates, int((~ok).sum()) + int(conflicting.sum()), gaps, later_us,
            _edge(before, 2, last=True), _edge(after, 1, last=False))


def _edge(df: pd.DataFrame, k: int, last: bool) -> pd.DataFrame:
    """The last (first) `k` valid trades of bronze rows `df` in exchange order (`_valid_in_order`), parsing only the
    rows of their last (first) minute when it holds `k` (a day's trades: parsing them all took seconds a build)."""
    minute = df["time"].astype(str).str[:16]   # YYYY-MM-DDTHH:MM (the collector's field rule)
    if len(df) > 1000:
        edge = _valid_in_order(df[minute == (minute.max() if last else minute.min())])
        if len(edge) >= k:
            return edge.tail(k) if last else edge.head(k)
    every = _valid_in_order(df)
    return every.tail(k) if last else every.head(k)


def _valid_in_order(df: pd.DataFrame) -> pd.DataFrame:
    """ts_us, trade_id, price of the valid trades of bronze rows `df`, one per trade id, in exchange order."""
    price = pd.to_numeric(df["price"], errors="coerce")
    size = pd.to_numeric(df["size"], errors="coerce")
    ts = pd.to_datetime(df["time"], utc=True, errors="coerce", format="ISO8601")
    ok = price.gt(0) & size.gt(0) & np.isfinite(price) & np.isfinite(size) & ts.notna() & df["trade_id"].notna()
    return _in_order(pd.DataFrame({"ts_us": ts[ok].astype("datetime64[us, UTC]").astype("int64"),
                                   "trade_id": df["trade_id"][ok].astype(str), "price": price[ok].astype(float)})
                     .drop_duplicates("trade_id"))


def build_trade_bars(settings: Settings | None = None, full_refresh: bool = False,
                     reference: Reference | None = None) -> TradeBarsSummary:
    """Bring silver trade bars up to date with bronze trades, then reconcile them with the candle bars.
    `reference`: the run's reference data (etl.reference_set; default: the files of `settings`)."""
    settings = settings or get_settings()
    store = get_store(settings)
    lake = Lake.of(store, settings)
    summary = TradeBarsSummary()
    bronze = increments.increment(lake, TRADES_DIR, TRADE_BARS_DIR, full_refresh)
    new = bronze.new
    lost = {k for f in candles.set_aside_files(store, TRADES_DIR) if (k := increments.partition_of(f))}
    # and the days that lost a file since the last build marked them (a build that set the file aside and died
    # before its commit: no new file tells the rerun)
    touched = set(increments.touched(new, TRADES_DIR)) | (lost - _marked_lost(lake))
    days = _days(bronze.files)
    # a partition new to bronze holds the first trade after its product's partition before: that one's last bar is
    # closed now (and the runs going on into the new partition tell whether its end is whole): rebuilt too
    # and the product's partition after a touched one: its first trades are judged after the touched day's last
    # ones, its runs carried over from them (a late trade of a day whose next day is built)
    had = sorted((set(bronze.files) - set(new)) | set(bronze.removed))   # a compacted partition is not new
    for product, day in sorted(touched):
        before = [d for d in days.get(product, []) if d < day]
        if before and not increments.files_of(had, TRADES_DIR, product, day):
            touched.add((product, before[-1]))
        if following := next((d for d in days.get(product, []) if d > day), ""):
            touched.add((product, following))
    touched = sorted(touched)
    summary.files = len(new)
    quotes = _quotes(Reference.of(reference, settings), {p for p, _ in touched})
    breaks = sequence_breaks(lake) if touched else Breaks()
    parts, gone = {}, set()
    todo = list(touched)
    for product, day in todo:  # grows by the day before when one of its files is set aside
        # the product's partitions before and after: a day without trades in between judges nothing
        before = next((d for d in reversed(days.get(product, [])) if d < day), "")
        after = next((d for d in days.get(product, []) if d > day), "")
        own, previous, following = _files(bronze.files, gone, product, day, before, after)
        try:
            trades, rows_in, dups, invalid, gaps, later, near_before, near_after = read_trades(
                store, own, breaks, previous, following)
        except (CorruptFileError, pa.ArrowException, OSError, ValueError):
            bad = candles.set_aside_unreadable(store, own + previous + following)
            if not bad:
                raise  # every file reads whole: not a corrupt file
            summary.bad_files += bad.values()
            gone.update(bad)
            keys = {increments.partition_of(f) for f in bad}
            lost |= keys
            todo += sorted(keys - set(todo))  # the day before's bars change too
            own, previous, following = _files(bronze.files, gone, product, day, before, after)
            trades, rows_in, dups, invalid, gaps, later, near_before, near_after = read_trades(
                store, own, breaks, previous, following)
        summary.trades_in += rows_in
        summary.duplicates += dups
        summary.invalid += invalid
        trades = _in_order(trades)
        bad, told = suspect_prints(trades, product, near_before, near_after)
        if told:
            log.warning("silver: %d bad trade print(s) of %s on %s left out of its bars: %s", len(told), product, day,
                        "; ".join(told))
            summary.suspect += told
        bars = trade_bars(trades[~bad], ordered=True)
        cut = _cut(bars["bucket_start_us"].to_numpy(dtype=np.int64), gaps) | ((product, day) in lost)
        parts[(product, day)] = _table(bars, quotes.get(product, ""), cut, later)
        summary.partitions += 1
        summary.bars += parts[(product, day)].num_rows
        summary.cut += int(cut.sum())
    candles.remove(store, lake, sorted(gone), TRADES_DIR, BRONZE_SCHEMA)
    if new or touched:  # the partitions' new files and the bronze version read, in one commit
        increments.commit(store, lake, TRADE_BARS_DIR, TRADE_BARS_SCHEMA, parts, bronze.version,
                          {LOST: json.dumps(sorted(f"{p}/{d}" for p, d in lost))})
    if touched:
        summary.reconciliation = reconcile(store, touched)
        store.write_json(RECONCILIATION_FILE, asdict(summary))
    log.info("silver: %s", str(summary).replace("\n", " |"))
    return summary


def _marked_lost(lake: Lake) -> set[tuple[str, str]]:
    """The (product, date) partitions the last build's commit recorded as having lost a bronze file (their bars
    built not complete)."""
    recorded = lake.metadata(TRADE_BARS_DIR, LOST)
    return {tuple(k.split("/", 1)) for k in json.loads(recorded[1])} if recorded else set()


def _files(files: list[str], gone: set[str], product: str, *days: str) -> list[list[str]]:
    """The files of the partitions (product, day) of `days` ("": none), but those set aside."""
    return [[f for f in increments.files_of(files, TRADES_DIR, product, d) if f not in gone] if d else []
            for d in days]


def _days(files: list[str]) -> dict[str, list[str]]:
    """{product: the sorted dates of its bronze partitions}."""
    out: dict[str, set[str]] = {}
    for f in files:
        if k := increments.partition_of(f):
            out.setdefault(k[0], set()).add(k[1])
    return {p: sorted(d) for p, d in out.items()}


def _cut(bucket_start_us: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """Which bars [b, b + 5m) overlap a hole (t1, t2)."""
    if not len(gaps) or not len(bucket_start_us):
        return np.zeros(len(bucket_start_us), dtype=bool)
    b = bucket_start_us[:, None]
    return ((gaps[None, :, 0] < b + BAR_US) & (gaps[None, :, 1] > b)).any(axis=1)


def _table(bars: pd.DataFrame, quote: str, cut: np.ndarray, later_us: int = 0) -> pa.Table:
    """`later_us`: the first trade time of the product's next partition (0: none yet)."""
    n = len(bars)
    bar_end = bars["bucket_start_us"].to_numpy() + BAR_US
    closed = bar_end <= max(bars["last_us"].max() if n else 0, later_us)  # a later trade exists, in any partition
    ts = pa.timestamp("us", tz="UTC")

    def stamp(col):
        return pa.array(bars[col].to_numpy(dtype=np.int64), pa.int64()).cast(ts)

    return pa.table({
        "bucket_start": stamp("bucket_start_us"),
        **{c: pa.array(bars[c].to_numpy(dtype=np.float64), pa.float64())
           for c in ("open", "high", "low", "close", "volume", "vwap")},
        "n_candles": pa.array(bars["n_candles"].to_numpy(dtype=np.int64)),
        "is_complete": pa.array(closed & (bars["n_candles"].to_numpy() == 5) & ~cut),
        "quote_currency": pa.array([quote] * n, pa.string()),
        "first_candle_at": stamp("first_us"), "last_candle_at": stamp("last_us"),
        "source_granularity": pa.array(np.zeros(n, dtype=np.int64)),
        "n_trades": pa.array(bars["n_trades"].to_numpy(dtype=np.int64)),
    }).cast(TRADE_BARS_SCHEMA)


def reconcile(store: Store, partitions: list[tuple[str, str]]) -> dict:
    """Complete trade bars vs complete candle bars of the same (product, bucket): counts and VWAP difference."""
    pairs, lake = [], Lake.of(store)
    for product, day in partitions:
        paths = [increments.partition_file(lake, table, product, day) for table in (TRADE_BARS_DIR, CANDLE_BARS_DIR)]
        if None in paths:
            continue
        trade, candle = (store.read_parquet(p).to_pandas() for p in paths)
        merged = trade[trade["is_complete"]].merge(candle[candle["is_complete"]], on="bucket_start",
                                                   suffixes=("_t", "_c"))
        merged["product_id"] = product
        pairs.append(merged)
    if not pairs or not sum(len(p) for p in pairs):
        return {"compared": 0}
    m = pd.concat(pairs, ignore_index=True)
    ohlc = np.zeros(len(m), dtype=bool)
    for c in ("open", "high", "low", "close"):
        ohlc |= m[f"{c}_t"].to_numpy() != m[f"{c}_c"].to_numpy()
    volume = ~np.isclose(m["volume_t"], m["volume_c"], rtol=1e-9, atol=0)
    diff_bps = (m["vwap_t"] / m["vwap_c"] - 1).to_numpy() * 1e4
    return {"compared": int(len(m)), "ohlc_mismatches": int(ohlc.sum()), "volume_mismatches": int(volume.sum()),
            "vwap_diff_bps_mean": float(diff_bps.mean()), "vwap_diff_bps_max_abs": float(np.abs(diff_bps).max()),
            "products": sorted(m["product_id"].unique().tolist())}


def _quotes(reference: Reference, products: set[str]) -> dict[str, str]:
    quotes = reference.quote_ccy
    return {p: quotes.get(p, p.split("-")[-1]) for p in products}
