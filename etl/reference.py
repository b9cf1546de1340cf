"""Reference data: instrument master and exchanges (this module); portfolios and positions: etl/portfolios.py.

Files are CSV under `settings.reference_dir` (samples ship in etl/reference_data/; point PIPELINE_REFERENCE_DIR at
real files). Loading validates every row and raises one ValidationError naming file, line and rule; nothing is
partially loaded.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from etl.errors import ValidationError
from etl.settings import Settings, get_settings

INSTRUMENT_COLUMNS = ["product_id", "base_currency", "quote_currency", "exchange_id", "asset_class", "display_name"]
EXCHANGE_COLUMNS = ["exchange_id", "name", "api_base_url", "timezone"]


def read_reference_csv(path: Path, required: list[str]) -> pd.DataFrame:
    """A reference CSV as strings, header names and cells stripped; raises if the file or a column is missing."""
    if not path.exists():
        raise ValidationError(f"{path}: reference file not found (set PIPELINE_REFERENCE_DIR to its folder)")
    _check_field_counts(path)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValidationError(f"{path}:1: header: missing column(s) {missing}; expected at least {required}")
    return df.apply(lambda s: s.str.strip())


def _check_field_counts(path: Path) -> None:
    """Every row has as many fields as the header (pandas would fail without the file name on an extra field,
    and silently fill a missing one)."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header:
                raise ValidationError(f"{path}:1: empty file: expected a header line")
            for row in reader:
                if row and len(row) != len(header):
                    raise ValidationError(
                        f"{path}:{reader.line_num}: {len(row)} fields, the header has {len(header)} "
                        f"({','.join(h.strip() for h in header)}): {'an extra' if len(row) > len(header) else 'a missing'}"
                        " field (a stray comma? quote values that contain commas)")
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValidationError(f"{path}: not a readable UTF-8 CSV file ({exc})") from None


def _line(i: int) -> int:
    return i + 2  # header is line 1; data row i (0-based) is line i + 2


def load_exchanges(settings: Settings | None = None) -> pd.DataFrame:
    settings = settings or get_settings()
    path = settings.reference_dir / "exchanges.csv"
    df = read_reference_csv(path, EXCHANGE_COLUMNS)
    dup = df["exchange_id"].duplicated()
    if dup.any():
        i = int(dup.to_numpy().argmax())
        raise ValidationError(f"{path}:{_line(i)}: duplicate exchange_id {df['exchange_id'].iat[i]!r}")
    return df[EXCHANGE_COLUMNS]


def load_instruments(settings: Settings | None = None) -> pd.DataFrame:
    """The instrument master: one row per product, with its base and quote currency."""
    settings = settings or get_settings()
    path = settings.reference_dir / "instruments.csv"
    df = read_reference_csv(path, INSTRUMENT_COLUMNS)
    exchanges = set(load_exchanges(settings)["exchange_id"])
    for i, row in enumerate(df.itertuples(index=False)):  # reference files are small: per-row checks read best
        where = f"{path}:{_line(i)}"
        if not row.product_id or row.product_id != f"{row.base_currency}-{row.quote_currency}":
            raise ValidationError(f"{where}: product_id {row.product_id!r} must be BASE-QUOTE "
                                  f"({row.base_currency}-{row.quote_currency})")
        if row.exchange_id not in exchanges:
            raise ValidationError(f"{where}: unknown exchange_id {row.exchange_id!r} (known: {sorted(exchanges)})")
    dup = df["product_id"].duplicated()
    if dup.any():
        i = int(dup.to_numpy().argmax())
        raise ValidationError(f"{path}:{_line(i)}: duplicate product_id {df['product_id'].iat[i]!r}")
    return df[INSTRUMENT_COLUMNS]


def quote_currency(product_id: str, settings: Settings | None = None) -> str:
    inst = load_instruments(settings).set_index("product_id")
    if product_id not in inst.index:
        raise ValidationError(f"product {product_id!r} is not in the instrument master "
                              f"({settings.reference_dir if settings else 'etl/reference_data'}/instruments.csv)")
    return str(inst.at[product_id, "quote_currency"])
