"""Silver: deduplicated, quality-checked 5-minute and daily bars built incrementally from bronze candles.

Modules: `bars` (dedup and aggregation maths), `quality` (named rules), `price_quality` (the market-data quality
gate: suspect prints), `incremental` (`build`, the partition bookkeeping), `read` (`read_bars`, `read_candles`), `currency` (`convert`). docs/silver.md has the schemas.
"""

import importlib

# Imported on first use (PEP 562): the build's worker processes import only `incremental` and its kernels, not
# pandas through `currency` and `read` (about 1 s and 50 MB per worker).
_EXPORTS = {"convert": "currency", "SilverSummary": "incremental", "build": "incremental", "read_bars": "read",
            "read_candles": "read"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
