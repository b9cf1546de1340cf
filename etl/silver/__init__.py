"""Silver: deduplicated, quality-checked 5-minute and daily bars built incrementally from bronze candles.

Modules: `bars` (dedup and aggregation maths), `quality` (named rules), `incremental` (`build`, the partition
bookkeeping), `read` (`read_bars`, `read_candles`), `currency` (`convert`). docs/silver.md has the schemas.
"""

from etl.silver.currency import convert
from etl.silver.incremental import SilverSummary, build
from etl.silver.read import read_bars, read_candles

__all__ = ["SilverSummary", "build", "convert", "read_bars", "read_candles"]
