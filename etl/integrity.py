"""Integrity of the lake's Parquet files: what a corrupt file is, its content hash, and the command that repairs it.

Two checks, both in `etl.storage.Store` (the one place Parquet is written and read):
- page checksums: every file is written with a CRC32 per data page and every read verifies them, so a flipped
  byte inside a compressed page fails the read instead of decoding into wrong prices;
- content hashes: the commit that publishes a file (a bronze candle commit, silver's state, a risk/factors run
  record) records the SHA-256 of its bytes; the readers that matter (silver, risk, the loader)
  pass the recorded digests and a file whose bytes differ is refused, footer and page headers included.
A file with no recorded digest (written before digests were recorded) is read with the page checks only.
"""

from __future__ import annotations

import hashlib
import re
from datetime import date, timedelta

from etl.errors import ValidationError

HASH = "sha256"  # the key of a commit's digests; hashlib's sha256 runs at ~2 GB/s (SHA-NI), far above Parquet decoding


class CorruptFileError(ValidationError):
    """A Parquet file that does not read whole or whose bytes differ from its commit: one line, the path, the fix."""

    def __init__(self, rel: str, path: str, reason: str):
        self.rel, self.reason = rel, reason
        super().__init__(f"{path} is corrupt ({reason}): {repair(rel)}")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_STREAMED = ("bronze/trades/", "bronze/order_book/")  # etl.stream.sinks' tables silver reads
_DAY = re.compile(r"/(?:run_as_of_date|as_of_date|date)=(\d{4}-\d{2}-\d{2})/")


def repair(rel: str) -> str:
    """The command that rewrites the file at `rel` (a path relative to the data root) from its inputs, or, for a
    streamed file, which no command can fetch again, what silver does with it and where its rows may be found."""
    day = m.group(1) if (m := _DAY.search(rel)) else "D"
    product = m.group(1) if (m := re.search(r"/product_id=([^/]+)/", rel)) else "P"
    if rel.startswith(_STREAMED):  # the WebSocket has no history: the only other copy is a backup
        return ("streamed data cannot be fetched again: `python -m etl silver` sets the file aside into "
                "bronze/quarantined_files/ and builds from the rest"
                + (f", marking the trade bars of {product} on {day} incomplete" if rel.startswith("bronze/trades/")
                   else "")
                + "; to get its rows back, restore the data folder from a backup taken before the file went bad")
    if rel.startswith("bronze/"):
        end = (date.fromisoformat(day) + timedelta(days=1)).isoformat() if day != "D" else "D+1"
        gran = f" --granularity {m.group(1)}" if (m := re.search(r"-g(\d+)\.parquet$", rel)) else ""
        return (f"re-ingest that window: `python -m etl ingest --products {product} --start {day} --end {end}{gran}`, "
                "then `python -m etl silver` (silver quarantines the file into bronze/quarantined_files/ and builds "
                "from the rest)")
    if rel.startswith("silver/"):
        return "run `python -m etl silver --full-refresh`"
    if rel.startswith("outputs/factor_"):
        return f"run `python -m etl factors --end {day}`"
    if rel.startswith("outputs/intraday_"):
        m = re.search(r"/bucket=(\d{2})(\d{2})/", rel)
        return f"run `python -m etl intraday --bucket {day}T{m.group(1) if m else 'HH'}:{m.group(2) if m else 'MM'}`"
    if rel.startswith("outputs/"):
        return f"run `python -m etl risk --as-of {day}`"
    return "delete it and rerun the stage that wrote it"
