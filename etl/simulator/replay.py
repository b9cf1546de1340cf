"""Replay recorded candles: `{PRODUCT}_{GRANULARITY}s_{anything}.csv` files served at their recorded granularity
and at coarser valid ones by aggregation.

A CSV has a header naming `timestamp` (naive UTC 'YYYY-MM-DD HH:MM:SS', ISO 8601 or epoch seconds) and open, high,
low, close, volume in any order. Files of one product and granularity are merged; on overlapping timestamps the
file later in name order wins (within one file a repeated timestamp is an error). A bad row (non-finite values
included) stops the load with a ValidationError `file:line: rule`: a simulator that silently served a subset of
the recording would hide the problem from every test using it.
"""

from __future__ import annotations

import io
import logging
import posixpath
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from etl.errors import ConfigError, ValidationError
from etl.simulator.price_model import GRANULARITIES, Candles, UnsupportedRequest, aggregate
from etl.simulator.universe import UNIVERSE, ProductSpec
from etl.storage import Store

log = logging.getLogger(__name__)

FILE_NAME = re.compile(r"^(?P<product>[A-Z0-9]+-[A-Z0-9]+)_(?P<granularity>\d+)s_.*\.csv$")
VALUE_COLUMNS = ("low", "high", "open", "close", "volume")  # the order of the values array


@dataclass(frozen=True)
class Recording:
    granularity: int
    times: np.ndarray      # int64 epoch seconds, ascending, unique
    values: np.ndarray     # float64 [n, 5]: low, high, open, close, volume
    files: tuple[str, ...]


def _parse_times(column: pd.Series, path: str) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(column):
        bad = column.isna() | (column % 1 != 0)
        parsed = column.where(~bad, 0).astype("int64").to_numpy()
    else:
        stamps = pd.to_datetime(column, utc=True, format="ISO8601", errors="coerce")
        bad = stamps.isna()
        parsed = (stamps.where(~bad, pd.Timestamp(0, tz="UTC")).astype("datetime64[s, UTC]")
                  .astype("int64").to_numpy())
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
        raise ValidationError(f"{path}:{line}: timestamp {column.iloc[line - 2]!r} is not naive UTC "
                              "'YYYY-MM-DD HH:MM:SS', ISO 8601 or epoch seconds; fix or remove the row")
    return parsed


def read_recording(store: Store, path: str, granularity: int) -> tuple[np.ndarray, np.ndarray]:
    """One CSV -> (times, values), validated: parseable numbers, low <= open/close <= high, aligned times."""
    with store.fs.open_input_stream(path) as f:
        frame = pd.read_csv(io.BytesIO(f.read()))
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    missing = [c for c in ("timestamp", *VALUE_COLUMNS) if c not in frame.columns]
    if missing:
        raise ValidationError(f"{path}: missing column(s) {', '.join(missing)}; the header must name timestamp, "
                              "open, high, low, close, volume (any order)")
    times = _parse_times(frame["timestamp"], path)
    values = frame[list(VALUE_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    first = pd.Series(times).duplicated(keep="first").to_numpy()
    rules = {
        "a value is not a finite number (empty, text, NaN or inf)": ~np.isfinite(values).all(axis=1),
        "low > high or open/close outside [low, high]": (
            (values[:, 0] > values[:, 1]) | (values[:, 2:4] < values[:, [0]]).any(axis=1)
            | (values[:, 2:4] > values[:, [1]]).any(axis=1)),
        "negative volume": values[:, 4] < 0,
        f"timestamp not a multiple of {granularity}s": times % granularity != 0,
        "timestamp repeated within the file": first,
    }
    for rule, bad in rules.items():
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            if bad is first:
                rule += f" (first at line {int(np.flatnonzero(times == times[row])[0]) + 2})"
            raise ValidationError(f"{path}:{row + 2}: {rule} ({frame.iloc[row].to_dict()}); fix or remove "
                                  "the row")
    return times, values


def load_recordings(replay_dir: str) -> dict[str, dict[int, Recording]]:
    """Every `{PRODUCT}_{GRANULARITY}s_*.csv` under `replay_dir` (a path or URI), by product and granularity."""
    store = Store.from_uri(replay_dir)
    info = store.fs.get_file_info(store.root)
    if info.type != pafs.FileType.Directory:
        raise ConfigError(f"replay directory {replay_dir} does not exist or is not a directory; pass --replay DIR "
                          "with recorded CSVs")
    files: dict[tuple[str, int], list[str]] = {}
    for entry in store.fs.get_file_info(pafs.FileSelector(store.root)):
        match = FILE_NAME.match(posixpath.basename(entry.path))
        if entry.type != pafs.FileType.File or not match:
            continue
        granularity = int(match["granularity"])
        if granularity not in GRANULARITIES:
            raise ConfigError(f"{entry.path}: granularity {granularity}s is not one of {GRANULARITIES}; "
                              "rename the file or resample it")
        files.setdefault((match["product"], granularity), []).append(entry.path)
    if not files:
        raise ConfigError(f"no replay files in {replay_dir}: expected names like BTC-USD_300s_2026-01-01.csv")
    out: dict[str, dict[int, Recording]] = {}
    for (product, granularity), paths in sorted(files.items()):
        parts = [read_recording(store, p, granularity) for p in sorted(paths)]
        times = np.concatenate([p[0] for p in parts])
        values = np.concatenate([p[1] for p in parts])
        # stable sort, then keep the last row of each timestamp: later files win on overlaps
        order = np.argsort(times, kind="stable")
        times, values = times[order], values[order]
        last = np.concatenate([times[1:] != times[:-1], [True]])
        if (~last).any():
            log.info("replay %s %ss: %d duplicate timestamps across files, later file kept",
                     product, granularity, int((~last).sum()))
        out.setdefault(product, {})[granularity] = Recording(granularity, times[last], values[last],
                                                              tuple(sorted(paths)))
        log.info("replay %s %ss: %d candles from %d file(s)", product, granularity, int(last.sum()), len(paths))
    return out


def replay_spec(product: str) -> ProductSpec:
    """Metadata of a replayed product: the universe's if known, else a plain online spot product."""
    if product in UNIVERSE:
        return UNIVERSE[product]
    base, quote = product.split("-", 1)
    return ProductSpec(product, base, quote, start_price=1.0, annual_vol=0.0, beta=0.0, daily_volume_usd=0.0,
                       missing_prob=0.0)


class ReplaySource:
    """Candles from recordings, the same interface as the synthetic source."""

    def __init__(self, replay_dir: str, products: tuple[str, ...] | None = None):
        self.recordings = load_recordings(replay_dir)
        if products:
            unknown = sorted(set(products) - set(self.recordings))
            if unknown:
                raise ConfigError(f"product(s) {', '.join(unknown)} not recorded in {replay_dir}; "
                                  f"recorded: {', '.join(sorted(self.recordings))}")
            self.recordings = {p: self.recordings[p] for p in products}
        self.products = {p: replay_spec(p) for p in self.recordings}

    def base_granularity(self, product: str, granularity: int) -> int:
        """The recorded granularity a request is aggregated from: the coarsest that divides it."""
        usable = [g for g in self.recordings[product] if g <= granularity and granularity % g == 0]
        if not usable:
            recorded = ", ".join(f"{g}s" for g in sorted(self.recordings[product]))
            raise UnsupportedRequest(f"granularity {granularity} is finer than the recorded candles of {product} "
                                     f"({recorded}); request a multiple of the recorded granularity")
        return max(usable)

    def arrays(self, product: str, start: int, end: int, granularity: int) -> Candles:
        """Candles with bucket start in [start, end), ascending (start rounded up to the granularity)."""
        rec = self.recordings[product][self.base_granularity(product, granularity)]
        first = -(-int(start) // granularity) * granularity
        stop = -(-int(np.ceil(end)) // granularity) * granularity  # whole buckets: the last one may pass `end`
        keep = slice(np.searchsorted(rec.times, first), np.searchsorted(rec.times, stop))
        times, values = rec.times[keep], rec.values[keep]
        if rec.granularity != granularity:
            return aggregate(times, values, granularity)
        return times.copy(), values.copy()
