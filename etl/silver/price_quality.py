"""The market-data quality gate: candles that passed the row rules but are prices nobody traded at.

Rules (named as in `silver/price_quality` and gold.fact_price_quality; docs/data_quality.md has the reasons and
the false-positive rates measured on real Coinbase candles). Returns are log returns of the close between
consecutive candles of one product and granularity.
- `spike_revert`: the candle's close jumps away from the previous close and the next candle comes straight back:
  both legs beyond the threshold T, opposite signs, and the next close within REVERT_FRACTION of the smaller leg
  of the previous close. T = max(JUMP_FLOOR for the granularity, JUMP_K x robust scale), the robust scale being
  1.4826 x the median absolute return of the candle's day and the day before (when they hold SCALE_MIN_RETURNS).
- `jump_unconfirmed`: the latest candle (no next candle of its granularity by the end of the next day) jumps
  beyond T: it cannot be told from a spike yet, so it is held out until the next candle arrives and confirms it.
  A latest candle that undoes the jump of the candle before it (a spike's way back) is not flagged. A latest
  candle after a missing day (no candle the day before) jumps from the close of two days before, if any.
- `jump_unanchored`: the mirror image: a candle with no previous candle of its series within a day (the series'
  first, or the first after a gap of a day or more) whose next close jumps beyond T. With nothing before it, a
  bad first print cannot be told from a real one by the rules above, and it would start the history at a price
  nobody traded at; it is held out (accept it by override if genuine).
- `granularity_mismatch`: a coarser candle (a daily or 5-minute candle) whose close differs by more than
  MISMATCH_TOLERANCE from the last close of the finer candles of its span (the 1-minute or 5-minute candles).
- `frozen_zero_volume`: volume 0 with open = high = low = close. Coinbase serves no candle for a bucket without
  trades, so such a candle is a price carried forward by a feed, not a trade.

Every rule reads only candles of the candle's own UTC day, the two days before and the day after (CONTEXT_DAYS):
silver reads those partitions as context and rebuilds the days a change reaches, so incremental runs and a full
refresh flag the same prints.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.silver.bars import BAR_1D_GRANULARITIES, TS, US, timestamps_us

RULES = ("spike_revert", "jump_unconfirmed", "jump_unanchored", "granularity_mismatch", "frozen_zero_volume")
EXCLUDED, ACCEPTED = "excluded", "accepted_by_override"  # the decisions on a flagged print

DAILY = 86_400
JUMP_FLOOR_INTRADAY = math.log(1.25)  # +25% / -20% in one intraday candle and straight back
JUMP_FLOOR_DAILY = math.log(1.65)     # +65% / -39% in one day (or 6-hour candle) and straight back
JUMP_K = 25.0                         # ... or 25 robust standard deviations, for products that move more
SCALE_MIN_RETURNS = 30                # fewer returns in the two days: the floor alone
REVERT_FRACTION = 0.5                 # next close back within half the smaller leg of the previous close
MISMATCH_TOLERANCE = 0.01             # coarse close vs the last fine close, as a log difference

DAY_US = DAILY * US
CONTEXT_DAYS = (-2, -1, 1)  # the days, relative to a candle's own, that its rules may read
FLAG_SCHEMA = pa.schema([
    ("bucket_start", TS), ("granularity", pa.int64()), ("rule", pa.string()), ("failed_rules", pa.string()),
    ("evidence", pa.string()), ("reference_close", pa.float64()), ("open", pa.float64()), ("high", pa.float64()),
    ("low", pa.float64()), ("close", pa.float64()), ("volume", pa.float64()),
])


def jump_floor(granularity: np.ndarray) -> np.ndarray:
    return np.where(granularity >= 21_600, JUMP_FLOOR_DAILY, JUMP_FLOOR_INTRADAY)


def gate(candles: pa.Table, quarantined: pa.Table | None = None) -> tuple[np.ndarray, pa.Table]:
    """(mask of the suspect rows of `candles`, one FLAG_SCHEMA row per suspect row, in the rows' order).

    `candles`: deduplicated rows that passed the row rules, columns product_id, bucket_start, granularity and
    open/high/low/close/volume, any order, any number of products and granularities. `quarantined`: the rows the
    row rules refused (product_id, bucket_start, granularity): finer candles that end in one do not cover their
    span's end, so they judge no coarser candle.
    """
    n = candles.num_rows
    if n == 0:
        return np.zeros(0, dtype=bool), FLAG_SCHEMA.empty_table()
    codes, gran, ts = _keys(candles)
    o, h, lo, c, v = (candles[m].to_numpy() for m in ("open", "high", "low", "close", "volume"))
    order = np.lexsort((ts, gran, codes))
    series = {}
    for k, x in _series_rules(codes[order], gran[order], ts[order], c[order]).items():
        series[k] = np.empty_like(x)
        series[k][order] = x  # back to the rows' order
    mismatch, fine_close, fine_gran, _ = _granularity_mismatch(codes, gran, ts, c, _refused(candles, quarantined))
    masks = {"spike_revert": series["spike_revert"], "jump_unconfirmed": series["jump_unconfirmed"],
             "jump_unanchored": series["jump_unanchored"], "granularity_mismatch": mismatch, "frozen_zero_volume": (v == 0) & (o == h) & (h == lo) & (lo == c)}
    suspect = np.logical_or.reduce(list(masks.values()))
    rows = np.flatnonzero(suspect)

    first, every, told = [""] * len(rows), [""] * len(rows), [""] * len(rows)
    reference = np.full(len(rows), np.nan)
    for k, i in enumerate(rows):  # flagged rows only: a handful
        broken = [rule for rule in RULES if masks[rule][i]]
        first[k], every[k] = broken[0], ",".join(broken)
        x, p, q, a, b, t = (c[i], series["prev_close"][i], series["next_close"][i], series["r_in"][i],
                            series["r_out"][i], series["threshold"][i])
        if broken[0] == "spike_revert":
            told[k] = (f"close {x:.8g}: {a:+.3f} log from the previous close {p:.8g}, then {b:+.3f} back to "
                       f"{q:.8g}; threshold {t:.3f}")
        elif broken[0] == "jump_unconfirmed":
            told[k] = f"close {x:.8g}: {a:+.3f} log from the previous close {p:.8g}, no later candle yet; threshold {t:.3f}"
        elif broken[0] == "jump_unanchored":
            p = q
            told[k] = (f"close {x:.8g}: no previous candle within a day, then {b:+.3f} log to the next close "
                       f"{q:.8g}; threshold {t:.3f}")
        elif broken[0] == "granularity_mismatch":
            p = fine_close[i]
            told[k] = (f"close {x:.8g} vs {fine_gran[i]}s candles' last close {p:.8g} ({math.log(x / p):+.4f} log, "
                       f"tolerance {MISMATCH_TOLERANCE})")
        else:
            told[k] = f"open = high = low = close = {x:.8g} with volume 0"
        reference[k] = p
    flags = pa.table({
        "bucket_start": pa.array(ts[rows], pa.int64()).cast(TS), "granularity": pa.array(gran[rows], pa.int64()),
        "rule": pa.array(first, pa.string()), "failed_rules": pa.array(every, pa.string()),
        "evidence": pa.array(told, pa.string()), "reference_close": pa.array(reference, pa.float64()),
        **{m: pa.array(x[rows], pa.float64()) for m, x in (("open", o), ("high", h), ("low", lo), ("close", c),
                                                           ("volume", v))},
    }, schema=FLAG_SCHEMA)
    return suspect, flags


def cut_short_in_daily_bars(candles: pa.Table, quarantined: pa.Table | None = None) -> np.ndarray:
    """Mask of the rows to leave out of the daily bars: the finer candles of a UTC day that stop before its end
    with nothing after them by the end of the next day (a fetch cut short: the 1-minute feed failed at 10:00) while
    the day's daily candle, the exchange's record of the whole day, closes elsewhere (beyond MISMATCH_TOLERANCE).
    Their last close is not the day's close: the daily bar comes from the daily candle. (When the finer candles
    do cover the day's end, `granularity_mismatch` judges the daily candle.) Only a daily candle fetched after its
    day ended is that record: one fetched during the day is the day so far, older than the minutes fetched after
    it. Same columns (and `quarantined`) as `gate` plus `ingested_at` (null: not known to be whole); reads the day
    and the next, as that rule does. A day whose last finer candles were quarantined is cut short too."""
    if candles.num_rows == 0:
        return np.zeros(0, dtype=bool)
    codes, gran, ts = _keys(candles)
    *_, cut_short = _granularity_mismatch(codes, gran, ts, candles["close"].to_numpy(), _refused(candles, quarantined))
    fetched = pc.fill_null(candles["ingested_at"].cast(TS).cast(pa.int64()), 0).to_numpy()
    out = np.zeros(len(ts), dtype=bool)
    for i in np.flatnonzero(cut_short & (gran == DAILY) & (fetched >= ts + DAY_US)):  # a handful of days
        out |= (codes == codes[i]) & (gran < DAILY) & (ts >= ts[i]) & (ts < ts[i] + DAY_US)
    return out


def uncovered_in_daily_bars(candles: pa.Table, quarantined: pa.Table | None, now_us: int) -> np.ndarray:
    """Mask of the rows to leave out of the daily bars: the finer candles of a UTC day over by `now_us` (us since
    the epoch) that has no daily candle fetched after it ended, when the finest of them (those a bar is built from)
    do not cover the day's end: they stop before its last bucket with none after them by the end of the next day,
    or a coarser candle of the day ends after their last (5-minute candles traded on past the minutes), or a
    quarantined one follows the last (the rule `cut_short_in_daily_bars` applies against a daily candle). Those
    are left out and the next granularity of the day is judged the same way: the first that covers the day's end
    makes its bar.
    With nothing to say what the day closed at (a 1-minute fetch that failed at 10:00 looks like this), their
    last close is not the day's close: the day has no daily bar, and the risk run's holding of it is stale,
    until the rest of the day's candles, or its daily candle, are fetched. A day not over yet keeps its bar from
    them: the day so far. Same columns (and `quarantined`) as `cut_short_in_daily_bars`."""
    out = np.zeros(candles.num_rows, dtype=bool)
    if candles.num_rows == 0:
        return out
    codes, gran, ts = _keys(candles)
    refused = _refused(candles, quarantined)
    fetched = pc.fill_null(candles["ingested_at"].cast(TS).cast(pa.int64()), 0).to_numpy()
    day = np.floor_divide(ts, DAY_US)
    fine = np.isin(gran, BAR_1D_GRANULARITIES) & (gran < DAILY)
    whole = (gran == DAILY) & (fetched >= ts + DAY_US)  # the exchange's record of its whole day
    for code, d in sorted(set(zip(codes[fine].tolist(), day[fine].tolist(), strict=True))):  # a month of days
        end = (d + 1) * DAY_US
        if end > now_us or (whole & (codes == code) & (day == d)).any():
            continue
        in_day = fine & (codes == code) & (day == d)
        for g in np.unique(gran[in_day]):  # finest first: the bar comes from the finest granularity left in
            series = ts[fine & (codes == code) & (gran == g)]
            last = series[series < end].max()
            covered = last + g * US == end or bool(((series >= end) & (series < end + DAY_US)).any())
            # a coarser candle of the day that ends after them: the day traded on past where they stop
            covered &= not (in_day & (gran > g) & (np.minimum(ts + gran * US, end) > last + g * US)).any()
            if refused is not None:
                covered &= not ((refused[0] == code) & (refused[1] == g) & (refused[2] > last)
                                & (refused[2] < end)).any()
            if covered:
                break
            out |= in_day & (gran == g)
    return out


def disputed_in_daily_bars(candles: pa.Table, suspect: np.ndarray, flags: pa.Table, excluded: np.ndarray) -> np.ndarray:
    """Mask of the finer candles to leave out of the daily bars: those of a day whose daily candle `gate` flagged
    `granularity_mismatch` (first) while the finest of them left in (`~excluded`) stop before the day's last bucket.
    A later candle (the next day's) made them count as covering the day, but an outage of the intraday fetch
    looks the same as a quiet end of day: the day's close is in dispute. The daily candle gives the day's bar once
    accepted by override; excluded, the day has no bar (the report names the print). `suspect`, `flags`: gate's
    result on `candles`; `excluded`: the suspect rows kept out."""
    out = np.zeros(candles.num_rows, dtype=bool)
    pick = (flags["granularity"].to_numpy() == DAILY) & \
        (flags["rule"].to_numpy(zero_copy_only=False) == "granularity_mismatch")
    if not pick.any():
        return out
    codes, gran, ts = _keys(candles)
    for i in np.flatnonzero(suspect)[pick]:  # a handful of days
        day = (codes == codes[i]) & (gran < DAILY) & (ts >= ts[i]) & (ts < ts[i] + DAY_US)
        used = day & ~excluded
        if used.any():
            finest = used & (gran == gran[used].min())
            if ts[finest].max() + gran[finest][0] * US < ts[i] + DAY_US:
                out |= day
    return out


def agreeing_in_daily_bars(candles: pa.Table, suspect: np.ndarray, flags: pa.Table, excluded: np.ndarray) -> np.ndarray:
    """Mask of the finer candles to leave out of the daily bars: those of a day whose daily candle is excluded by a
    rule on its own series (`spike_revert`, `jump_unconfirmed`, `jump_unanchored`) without a `granularity_mismatch`:
    the finer candles do not contradict its close (a feed printing 100x all day long, minutes and day alike). The
    bar from them would carry the close the gate held out; the day has no bar instead (the report names the print)
    until it is accepted by override or the next day's candle judges it again. Same arguments as
    `disputed_in_daily_bars`."""
    out = np.zeros(candles.num_rows, dtype=bool)
    rule = flags["rule"].to_numpy(zero_copy_only=False)
    failed = flags["failed_rules"].to_numpy(zero_copy_only=False)
    pick = ((flags["granularity"].to_numpy() == DAILY) & (rule != "granularity_mismatch")
            & np.array(["granularity_mismatch" not in f.split(",") for f in failed], dtype=bool))
    rows = np.flatnonzero(suspect)[pick]
    rows = rows[excluded[rows]]
    if not len(rows):
        return out
    codes, gran, ts = _keys(candles)
    for i in rows:  # a handful of days
        out |= (codes == codes[i]) & (gran < DAILY) & (ts >= ts[i]) & (ts < ts[i] + DAY_US)
    return out


def _keys(candles: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(product codes, granularity, bucket_start in us) of the rows."""
    product = candles["product_id"].combine_chunks()
    if not pa.types.is_dictionary(product.type):
        product = pc.dictionary_encode(product)
    codes = product.indices.to_numpy(zero_copy_only=False)  # any consistent code per product will do
    return codes, candles["granularity"].to_numpy().astype(np.int64), timestamps_us(candles["bucket_start"])


def _refused(candles: pa.Table, quarantined: pa.Table | None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(product codes as `_keys(candles)` gives them, granularity, bucket_start in us) of the quarantined rows."""
    if quarantined is None or quarantined.num_rows == 0:
        return None
    product = candles["product_id"].combine_chunks()
    names = (product if pa.types.is_dictionary(product.type) else pc.dictionary_encode(product)).dictionary
    codes = pc.index_in(quarantined["product_id"].cast(pa.string()), value_set=names.cast(pa.string()))
    return (pc.fill_null(codes, -1).to_numpy(zero_copy_only=False),
            quarantined["granularity"].to_numpy().astype(np.int64), timestamps_us(quarantined["bucket_start"]))


def _series_rules(codes: np.ndarray, gran: np.ndarray, ts: np.ndarray, close: np.ndarray) -> dict[str, np.ndarray]:
    """spike_revert, jump_unconfirmed and jump_unanchored masks, and the figures behind them, over rows sorted by (product,
    granularity, time)."""
    n = len(ts)
    day = np.floor_divide(ts, DAY_US)
    same = np.zeros(n, dtype=bool)  # same[i]: row i-1 is the same series
    same[1:] = (codes[1:] == codes[:-1]) & (gran[1:] == gran[:-1])
    prev_ok = same.copy()
    prev_ok[1:] &= day[:-1] >= day[1:] - 1  # the previous candle is at most a day earlier (in the context read)
    next_ok = np.zeros(n, dtype=bool)
    next_ok[:-1] = same[1:] & (day[1:] <= day[:-1] + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.diff(np.log(close))
    r_in = np.full(n, np.nan)
    r_in[1:] = np.where(prev_ok[1:], step, np.nan)
    # the latest candle after a missing day: judged against the close before the gap when the context holds it
    prev_near = same.copy()
    prev_near[1:] &= day[:-1] >= day[1:] + min(CONTEXT_DAYS)
    r_late = np.full(n, np.nan)
    r_late[1:] = np.where(prev_near[1:], step, np.nan)
    r_out = np.full(n, np.nan)
    r_out[:-1] = np.where(next_ok[:-1], step, np.nan)
    prev_close = np.full(n, np.nan)
    prev_close[1:] = close[:-1]
    next_close = np.full(n, np.nan)
    next_close[:-1] = close[1:]
    threshold = np.maximum(jump_floor(gran), JUMP_K * 1.4826 * _median_abs_return(codes, gran, day, r_in))
    with np.errstate(invalid="ignore"):
        a_in, a_out = np.abs(r_in), np.abs(r_out)
        spike = (prev_ok & next_ok & (a_in > threshold) & (a_out > threshold) & (np.sign(r_in) != np.sign(r_out))
                 & (np.abs(r_in + r_out) <= REVERT_FRACTION * np.minimum(a_in, a_out)))
        prev_in = np.full(n, np.nan)  # the previous candle's own jump (its previous candle is within two days)
        prev_in[1:] = np.where(prev_ok[1:], r_in[:-1], np.nan)
        way_back = ((np.abs(prev_in) > threshold) & (np.sign(prev_in) != np.sign(r_in))
                    & (np.abs(prev_in + r_in) <= REVERT_FRACTION * np.minimum(np.abs(prev_in), a_in)))
        unconfirmed = (prev_ok & ~next_ok & (a_in > threshold) & ~way_back) | \
            (~prev_ok & prev_near & ~next_ok & (np.abs(r_late) > threshold))
        unanchored = ~prev_ok & next_ok & (a_out > threshold)
    r_in = np.where(prev_ok, r_in, r_late)  # the evidence of a latest candle after a gap: its jump over it
    return {"spike_revert": spike, "jump_unconfirmed": unconfirmed, "jump_unanchored": unanchored,
            "prev_close": prev_close,
            "next_close": next_close, "r_in": r_in, "r_out": r_out, "threshold": threshold}


def _median_abs_return(codes: np.ndarray, gran: np.ndarray, day: np.ndarray, r_in: np.ndarray) -> np.ndarray:
    """Per row, the median |return| of its series over its day and the day before, or 0 when they hold fewer than
    SCALE_MIN_RETURNS. Rows sorted by (product, granularity, time).

    Of the day before, only returns whose previous candle is on that day count: a day's scale depends on no
    partition further away than silver reads as context."""
    n = len(day)
    series = np.cumsum(np.r_[True, (codes[1:] != codes[:-1]) | (gran[1:] != gran[:-1])])
    size = np.abs(r_in)
    within = np.zeros(n, dtype=bool)
    within[1:] = day[1:] == day[:-1]
    key = series * (1 << 32) + day
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    ends = np.r_[starts[1:], n]
    scale = np.zeros(n)
    for g, (g0, g1) in enumerate(zip(starts, ends, strict=True)):  # one small step per (series, day)
        window = size[g0:g1]
        if g and key[starts[g - 1]] == key[g0] - 1:  # the same series' day before
            p0 = starts[g - 1]
            window = np.concatenate([size[p0:g0][within[p0:g0]], window])
        window = window[np.isfinite(window)]
        if len(window) >= SCALE_MIN_RETURNS:
            scale[g0:g1] = np.median(window)
    return scale


def _granularity_mismatch(codes: np.ndarray, gran: np.ndarray, ts: np.ndarray, close: np.ndarray,
                          refused: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mask, the finer close compared with, its granularity, cut_short) for candles whose span's finer candles end
    elsewhere.

    The finer candles must cover the span's end: their last candle in the span is its last bucket, or a finer
    candle follows by the end of the next day (so the span is not cut by the end of what was fetched), no candle of
    a granularity between them and the span's ends later in the span (it traded on past them), and no
    quarantined finer candle (`refused`: codes, granularity, time) comes after it in the span (a refused candle is
    a bucket that traded at an unknown price, not one without trades: the span's close is not known). cut_short:
    the candles whose span's finest candles (those a bar is built from) do not cover its end and close elsewhere."""
    n = len(ts)
    fine_close = np.full(n, np.nan)
    cut_close = np.full(n, np.nan)  # the last close of the finest candles present in the span, not covering it
    seen = np.zeros(n, dtype=bool)   # the finest granularity present in the span was looked at
    fine_gran = np.zeros(n, dtype=np.int64)
    grans = np.unique(gran)
    for code in np.unique(codes):
        mine = codes == code
        for coarse in grans[::-1]:
            rows = np.flatnonzero(mine & (gran == coarse))
            if len(rows) == 0:
                continue
            for fine in grans[(grans < coarse) & (coarse % grans == 0)]:  # finest first
                f_rows = np.flatnonzero(mine & (gran == fine))
                if len(f_rows) == 0:
                    continue
                f_rows = f_rows[np.argsort(ts[f_rows], kind="stable")]
                f_ts = ts[f_rows]
                end = ts[rows] + coarse * US
                idx = np.searchsorted(f_ts, end) - 1  # the last finer candle before the span's end
                found = idx >= 0
                idx = np.maximum(idx, 0)
                following = np.searchsorted(f_ts, end) < len(f_ts)
                after_ok = following & (f_ts[np.minimum(idx + 1, len(f_ts) - 1)]
                                        < (np.floor_divide(ts[rows], DAY_US) + 2) * DAY_US)
                present = found & (f_ts[idx] >= ts[rows])
                ok = present & ((f_ts[idx] == end - fine * US) | after_ok)
                for mid in grans[(grans > fine) & (grans < coarse) & (coarse % grans == 0)]:
                    # a candle between the two granularities that ends, in the span, after the finer candles stop:
                    # the span traded on past them (a later finer candle only says nothing was fetched between)
                    m_ts = np.sort(ts[mine & (gran == mid)])
                    if len(m_ts):
                        j = np.searchsorted(m_ts, end) - 1
                        m_last = m_ts[np.maximum(j, 0)]
                        ok &= ~((j >= 0) & (m_last >= ts[rows]) & (m_last + mid * US > f_ts[idx] + fine * US))
                r_ts = np.zeros(0, np.int64) if refused is None else \
                    np.sort(refused[2][(refused[0] == code) & (refused[1] == fine)])
                if len(r_ts):
                    last = np.searchsorted(r_ts, end) - 1  # the last refused finer candle before the span's end
                    ok &= ~((last >= 0) & (r_ts[np.maximum(last, 0)] > f_ts[idx]))
                finest = present & ~seen[rows]  # the one the bar is built from
                seen[rows[finest]] = True
                cut = finest & ~ok
                cut_close[rows[cut]] = close[f_rows[idx[cut]]]
                take = ok & np.isnan(fine_close[rows])
                fine_close[rows[take]] = close[f_rows[idx[take]]]
                fine_gran[rows[take]] = fine
    with np.errstate(divide="ignore", invalid="ignore"):
        mismatch = np.abs(np.log(close / fine_close)) > MISMATCH_TOLERANCE
        cut_short = np.abs(np.log(close / cut_close)) > MISMATCH_TOLERANCE
    return mismatch, fine_close, fine_gran, cut_short
