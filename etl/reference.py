"""Reference data: instrument master, exchanges, firm limits (this module); portfolios and positions: etl/portfolios.py.

Files are CSV under `settings.reference_dir` (samples ship in etl/reference_data/; point PIPELINE_REFERENCE_DIR at
real files). Loading validates every row and raises one ValidationError naming file, line and rule; nothing is
partially loaded. `collecting()` records the problems instead of raising them: etl.reference_check runs the loaders
so (`python -m etl reference validate [DIR]`), every problem of every file, nothing raised or loaded.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import pandas as pd

from etl.errors import ValidationError
from etl.settings import Settings, get_settings
from etl.warehouse.schema import BY_NAME

INSTRUMENT_COLUMNS = ["product_id", "base_currency", "quote_currency", "exchange_id", "asset_class", "display_name"]
# optional: the UTC day a product stopped trading (empty = listed); a delisted holding is valued at its last close
DELISTED_ON = "delisted_on"
EXCHANGE_COLUMNS = ["exchange_id", "name", "api_base_url", "timezone"]
PRICE_OVERRIDE_COLUMNS = ["product_id", "granularity", "bucket_start", "accepted_by", "accepted_at", "reason"]
PRICE_OVERRIDES_FILE = "price_overrides.csv"  # optional: flagged prints an operator accepted as genuine
MAX_REPORTED = 20  # problems listed in one error message


# Under `collecting()`, row problems are recorded here instead of raised, and the loaders go on with the rows
# they have, so one pass finds every bad row of every file (a missing file or column still raises).
_collected: ContextVar[list[str] | None] = ContextVar("reference_problems", default=None)


@contextmanager
def collecting() -> Iterator[list[str]]:
    """Collect row problems (`file:line: rule ...`) of the loaders run inside instead of raising them."""
    token = _collected.set([])
    try:
        yield _collected.get()
    finally:
        _collected.reset(token)


def fail(problems: list[str], what: str) -> None:
    """Raise one ValidationError for these `file:line: rule` lines; under `collecting()`, record them instead."""
    if not problems:
        return
    collected = _collected.get()
    if collected is not None:
        collected.extend(problems)
        return
    shown = problems[:MAX_REPORTED]
    more = f"\n... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    raise ValidationError(f"{len(problems)} invalid row(s) in {what}; nothing loaded. Fix the file:\n"
                          + "\n".join(shown) + more)


def read_reference_csv(path: Path, required: list[str]) -> pd.DataFrame:
    """A reference CSV as strings, header names and cells stripped, indexed by each row's line in the file (what
    errors name: pandas skips blank lines, so a row's position is not its line); raises if the file or a column
    is missing."""
    if not path.exists():
        raise ValidationError(f"{path}: reference file not found (set PIPELINE_REFERENCE_DIR to its folder)")
    lines = _check_field_counts(path)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.index = pd.Index(lines, name="line")
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValidationError(f"{path}:1: header: missing column(s) {missing}; expected at least {required}")
    return df.apply(lambda s: s.str.strip())


def _check_field_counts(path: Path) -> list[int]:
    """Every row has as many fields as the header (pandas would fail without the file name on an extra field,
    and silently fill a missing one). Returns the line each non-blank data row starts on."""
    lines = []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header:
                raise ValidationError(f"{path}:1: empty file: expected a header line")
            end = reader.line_num  # the line the previous record ended on
            for row in reader:
                if row:
                    lines.append(end + 1)
                end = reader.line_num
                if row and len(row) != len(header):
                    raise ValidationError(
                        f"{path}:{reader.line_num}: {len(row)} fields, the header has {len(header)} "
                        f"({','.join(h.strip() for h in header)}): {'an extra' if len(row) > len(header) else 'a missing'}"
                        " field (a stray comma? quote values that contain commas)")
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValidationError(f"{path}: not a readable UTF-8 CSV file ({exc})") from None
    return lines


def _line(df: pd.DataFrame, i: int) -> int:
    """The file line of row `i` (0-based position) of a frame read_reference_csv returned."""
    return int(df.index[i])


def load_exchanges(settings: Settings | None = None) -> pd.DataFrame:
    settings = settings or get_settings()
    path = settings.reference_dir / "exchanges.csv"
    df = read_reference_csv(path, EXCHANGE_COLUMNS)
    dup = df["exchange_id"].duplicated()
    fail([f"{path}:{_line(df, int(i))}: duplicate exchange_id {df['exchange_id'].iat[int(i)]!r}"
          for i in dup.to_numpy().nonzero()[0]], "exchanges")
    return df[EXCHANGE_COLUMNS].reset_index(drop=True)


def load_instruments(settings: Settings | None = None, exchanges: pd.DataFrame | None = None) -> pd.DataFrame:
    """The instrument master: one row per product, with its base and quote currency, and `delisted_on`
    (datetime64 at midnight; NaT while the product is listed). `exchanges`: already loaded (etl.reference_set)."""
    settings = settings or get_settings()
    path = settings.reference_dir / "instruments.csv"
    df = read_reference_csv(path, INSTRUMENT_COLUMNS)
    exchanges = set((load_exchanges(settings) if exchanges is None else exchanges)["exchange_id"])
    problems = []
    delisted = df[DELISTED_ON] if DELISTED_ON in df.columns else pd.Series("", index=df.index)
    delisted_on = pd.to_datetime(delisted, format="%Y-%m-%d", errors="coerce")
    dup = df["product_id"].duplicated().to_numpy()
    for i, row in enumerate(df.itertuples(index=False)):  # reference files are small: per-row checks read best
        where = f"{path}:{_line(df, i)}"
        if not row.product_id or row.product_id != f"{row.base_currency}-{row.quote_currency}":
            problems.append(f"{where}: product_id {row.product_id!r} must be BASE-QUOTE "
                            f"({row.base_currency}-{row.quote_currency})")
        if row.exchange_id not in exchanges:
            problems.append(f"{where}: unknown exchange_id {row.exchange_id!r} (known: {sorted(exchanges)})")
        if dup[i]:
            problems.append(f"{where}: duplicate product_id {row.product_id!r}")
        if delisted.iat[i] and pd.isna(delisted_on.iat[i]):
            problems.append(f"{where}: unparsable date: {DELISTED_ON}={delisted.iat[i]!r}; use YYYY-MM-DD "
                            "(empty while listed)")
    fail(problems, "instruments")
    return df[INSTRUMENT_COLUMNS].assign(**{DELISTED_ON: delisted_on.astype("datetime64[ns]")}).reset_index(drop=True)


FIRM_LIMIT_COLUMNS = ["limit_id", "metric", "limit_value", "currency"]
FIRM_LIMITS_FILE = "firm_limits.csv"  # optional: without it the firm has no limit (the Firm page says so)


def load_firm_limits(settings: Settings | None = None) -> pd.DataFrame:
    """Firm-level limits: a `var_99_<method>` column of gold.fact_firm_risk (USD, the whole book as one portfolio)
    and its limit, positive, in USD. An absent file is no firm limit (empty frame)."""
    settings = settings or get_settings()
    path = settings.reference_dir / FIRM_LIMITS_FILE
    if not path.exists():
        return pd.DataFrame({c: pd.Series(dtype=float if c == "limit_value" else str) for c in FIRM_LIMIT_COLUMNS})
    df = read_reference_csv(path, FIRM_LIMIT_COLUMNS)
    metrics = sorted(c.name for c in BY_NAME["firm_risk"].columns if c.name.startswith("var_99_"))
    value = pd.to_numeric(df["limit_value"], errors="coerce")
    dup = df["limit_id"].duplicated().to_numpy()
    problems = []
    for i, row in enumerate(df.itertuples(index=False)):
        where = f"{path}:{_line(df, i)}"
        if not row.limit_id or dup[i]:
            problems.append(f"{where}: limit_id {row.limit_id!r} must be present and unique")
        if row.metric not in metrics:
            problems.append(f"{where}: metric {row.metric!r} is not a firm VaR 99% column (one of {metrics})")
        if not value.iat[i] > 0:
            problems.append(f"{where}: limit_value {row.limit_value!r} must be a positive number (USD)")
        if row.currency != "USD":
            problems.append(f"{where}: currency {row.currency!r}: firm figures are in USD")
    fail(problems, "firm limits")
    return df[FIRM_LIMIT_COLUMNS].assign(limit_value=value).reset_index(drop=True)


def quote_currency(product_id: str, settings: Settings | None = None) -> str:
    inst = load_instruments(settings).set_index("product_id")
    if product_id not in inst.index:
        raise ValidationError(f"product {product_id!r} is not in the instrument master "
                              f"({settings.reference_dir if settings else 'etl/reference_data'}/instruments.csv)")
    return str(inst.at[product_id, "quote_currency"])


def load_price_overrides(settings: Settings | None = None, instruments: pd.DataFrame | None = None) -> pd.DataFrame:
    """Prints the market-data quality gate flagged and an operator accepted as genuine (docs/data_quality.md):
    product_id, granularity (int seconds), bucket_start (UTC), accepted_by, accepted_at (UTC), reason.
    No file means no overrides. `instruments`: already loaded (etl.reference_set)."""
    settings = settings or get_settings()
    path = settings.reference_dir / PRICE_OVERRIDES_FILE
    if not path.exists():
        return pd.DataFrame({"product_id": pd.Series(dtype=str), "granularity": pd.Series(dtype="int64"),
                             "bucket_start": pd.Series(dtype="datetime64[us, UTC]"),
                             "accepted_by": pd.Series(dtype=str),
                             "accepted_at": pd.Series(dtype="datetime64[us, UTC]"), "reason": pd.Series(dtype=str)})
    df = read_reference_csv(path, PRICE_OVERRIDE_COLUMNS)
    products = set((load_instruments(settings) if instruments is None else instruments)["product_id"])
    granularity = pd.to_numeric(df["granularity"], errors="coerce")
    starts = pd.to_datetime(df["bucket_start"], utc=True, errors="coerce", format="ISO8601")
    accepted_at = pd.to_datetime(df["accepted_at"], utc=True, errors="coerce", format="ISO8601")
    problems = []
    dup = df.assign(_s=starts).duplicated(["product_id", "granularity", "_s"]).to_numpy()
    for i, row in enumerate(df.itertuples(index=False)):  # reference files are small: per-row checks read best
        where = f"{path}:{_line(df, i)}"
        if row.product_id not in products:
            problems.append(f"{where}: unknown product {row.product_id!r}: not in the instrument master")
        if granularity.iat[i] not in (60, 300, 900, 3600, 21600, 86400):
            problems.append(f"{where}: granularity {row.granularity!r} must be 60, 300, 900, 3600, 21600 or 86400")
        elif pd.isna(starts.iat[i]) or starts.iat[i].value % (int(granularity.iat[i]) * 10**9):
            problems.append(f"{where}: bucket_start {row.bucket_start!r} must be an ISO 8601 UTC time on the "
                            f"{int(granularity.iat[i])}s grid (as in silver/price_quality)")
        if pd.isna(accepted_at.iat[i]):
            problems.append(f"{where}: accepted_at {row.accepted_at!r} must be an ISO 8601 UTC time")
        if not row.accepted_by or not row.reason:
            problems.append(f"{where}: accepted_by and reason are required (who accepted the print, and why)")
        if dup[i]:
            problems.append(f"{where}: duplicate override of ({row.product_id}, {row.granularity}, "
                            f"{row.bucket_start})")
    fail(problems, PRICE_OVERRIDES_FILE)
    return pd.DataFrame({"product_id": df["product_id"], "granularity": granularity.astype("int64"),
                         "bucket_start": starts.astype("datetime64[us, UTC]"), "accepted_by": df["accepted_by"],
                         "accepted_at": accepted_at.astype("datetime64[us, UTC]"),
                         "reason": df["reason"]}).reset_index(drop=True)
