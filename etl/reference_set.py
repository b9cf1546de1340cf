"""The reference data of one run, read once and passed down.

An entry point (a CLI command, an Airflow task, `run_all`) builds one `Reference` and hands it to every stage it
runs. Each file is read and validated on first use, by the loaders that hold its rules (etl.reference,
etl.portfolios), with the files it depends on taken from the same object: a run parses every file once and all its
stages see the same rows. Nothing outlives the object, so the next run reads the files as they are then.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd

from etl.integrity import digest
from etl.portfolios import book_products, load_portfolios, load_positions
from etl.reference import (
    DELISTED_ON,
    load_exchanges,
    load_firm_limits,
    load_instruments,
    load_price_overrides,
)
from etl.settings import Settings, get_settings


def _frame(loader: Callable[..., pd.DataFrame], *needs: str) -> cached_property:
    """A frame loaded on first use as `loader(settings, **the frames it needs)`, then kept."""
    def load(self: Reference) -> pd.DataFrame:
        return loader(self.settings, **{name: getattr(self, name) for name in needs})

    load.__doc__ = loader.__doc__
    return cached_property(load)


@dataclass(frozen=True, eq=False)
class Reference:
    """The validated reference frames of `settings.reference_dir`, each loaded on first use. Read-only: a stage
    that needs a changed frame makes its own copy."""

    settings: Settings

    @classmethod
    def of(cls, reference: Reference | None, settings: Settings | None = None) -> Reference:
        """`reference` when the caller passes one down, else a new one over the files of `settings`."""
        return reference if reference is not None else cls(settings or get_settings())

    exchanges = _frame(load_exchanges)
    instruments = _frame(load_instruments, "exchanges")
    portfolios = _frame(load_portfolios, "instruments")
    positions = _frame(load_positions, "instruments", "portfolios")
    firm_limits = _frame(load_firm_limits)
    price_overrides = _frame(load_price_overrides, "instruments")

    @property
    def quote_ccy(self) -> dict[str, str]:
        """product -> its quote currency."""
        return dict(zip(self.instruments["product_id"], self.instruments["quote_currency"], strict=True))

    @cached_property
    def digests(self) -> dict[str, str]:
        """{file: SHA-256} of every reference file a run may read (the CSVs of the reference folder and the stress
        scenario file): what a run records, so that recomputing it later can tell whether they changed."""
        files = sorted(self.settings.reference_dir.glob("*.csv"))
        stress = self.settings.stress_scenarios_file
        if stress and Path(stress).exists() and Path(stress).parent != self.settings.reference_dir:
            files.append(Path(stress))
        return {str(f): digest(f.read_bytes()) for f in files}

    def needed_products(self) -> list[str]:
        """`book_products` of the reference files: what the book holds plus the conversion pairs valuation needs,
        less the products the instrument master declares delisted (the source serves no candles for them; risk
        values them at their last close)."""
        delisted = set(self.instruments.loc[self.instruments[DELISTED_ON].notna(), "product_id"])
        return [p for p in book_products(self.instruments, self.portfolios, self.positions) if p not in delisted]

    def conversion_pairs(self) -> list[str]:
        """The `<CCY>-USD` pairs `book_products` adds to convert amounts (a non-USD quote or base currency) that no
        book holds: rates, not assets (the factor model regresses them on the factors but builds no factor from
        them)."""
        held = set(self.positions["product_id"])
        return [p for p in book_products(self.instruments, self.portfolios, self.positions) if p not in held]

    def products_to_ingest(self) -> list[str]:
        """The products the pipeline ingests: PIPELINE_PRODUCTS when set, else `needed_products` (so a book of any
        instruments works without naming them twice)."""
        return list(self.settings.products) or self.needed_products()
