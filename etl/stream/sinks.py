"""Where micro-batches go: the `Sink` interface and its embedded implementation, `BronzeSink`.

A `MicroBatch` is what the collector received during one commit interval, already split by destination:
trades and tickers per (product_id, UTC date), order-book snapshots (top levels, typed: they are the collector's
rebuilt book, not a message) per (product_id, UTC date of the book's feed time), feed gaps and rejected messages per date, each as columns of
values exactly as received plus `sequence_num`, `received_at`, `batch_id`, `connection_id`.
`Sink.write(batch)` returns once the batch is durable (or raises); the collector calls it from one worker thread,
one batch at a time. A message-bus producer is one more implementation: `write` produces every row to its topic
(key = product_id, so one product stays ordered in one partition) and returns after the producer's flush; bronze
is then written by a consumer of that topic (docs/streaming.md).
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Protocol

import numpy as np
import pyarrow as pa

from etl.lake import DataFile, Lake
from etl.storage import Store, partition_path

log = logging.getLogger(__name__)

TRADES_DIR = "bronze/trades"
TICKER_DIR = "bronze/ticker"
GAPS_DIR = "bronze/stream_gaps"
REJECTS_DIR = "bronze/stream_rejects"
BOOK_DIR = "bronze/order_book"
TS = pa.timestamp("us", tz="UTC")

TRADE_FIELDS = ("trade_id", "price", "size", "side", "time")
TICKER_FIELDS = ("type", "price", "volume_24_h", "low_24_h", "high_24_h", "low_52_w", "high_52_w",
                 "price_percent_chg_24_h", "best_bid", "best_bid_quantity", "best_ask", "best_ask_quantity")
# every message carries these; `extra` holds any field of the element not listed (JSON), null when none
ENVELOPE = (("event_type", pa.string()), ("channel", pa.string()), ("timestamp", pa.string()),
            ("client_id", pa.string()), ("sequence_num", pa.int64()), ("connection_id", pa.string()),
            ("received_at", TS), ("batch_id", pa.string()), ("extra", pa.string()))


def _schema(fields: tuple[str, ...]) -> pa.Schema:
    return pa.schema([*((f, pa.string()) for f in fields), *ENVELOPE])


TRADES_SCHEMA = _schema(TRADE_FIELDS)
TICKER_SCHEMA = _schema(TICKER_FIELDS)
GAPS_SCHEMA = pa.schema([("kind", pa.string()), ("connection_id", pa.string()), ("channel", pa.string()),
                         ("expected", pa.int64()), ("received", pa.int64()), ("missing", pa.int64()),
                         ("detected_at", TS), ("detail", pa.string()), ("batch_id", pa.string())])
BOOK_SCHEMA = pa.schema([("side", pa.string()), ("level", pa.int32()), ("price", pa.float64()),
                        ("quantity", pa.float64()), ("book_time", TS), ("snapshot_at", TS),
                        ("sequence_num", pa.int64()), ("connection_id", pa.string()), ("batch_id", pa.string())])
REJECTS_SCHEMA = pa.schema([("raw", pa.string()), ("reason", pa.string()), ("connection_id", pa.string()),
                            ("received_at", TS), ("batch_id", pa.string())])


class Columns:
    """Column lists of one output table, filled row by row (values as received; received_at epoch seconds)."""

    __slots__ = ("names", "data")

    def __init__(self, names: tuple[str, ...]):
        self.names = names
        self.data: list[list] = [[] for _ in names]

    def __len__(self) -> int:
        return len(self.data[0])

    def append(self, row: tuple) -> None:
        for column, value in zip(self.data, row, strict=True):
            column.append(value)

    def table(self, schema: pa.Schema, batch_id: str) -> pa.Table:
        arrays = []
        for f in schema:
            if f.name == "batch_id":
                arrays.append(pa.array([batch_id] * len(self), pa.string()))
            elif f.type == TS:
                seconds = np.asarray(self.data[self.names.index(f.name)], dtype=np.float64)
                arrays.append(pa.array(np.round(seconds * 1e6).astype(np.int64), pa.int64()).cast(TS))
            else:
                arrays.append(pa.array(self.data[self.names.index(f.name)], f.type))
        return pa.Table.from_arrays(arrays, schema=schema)


def _names(schema: pa.Schema) -> tuple[str, ...]:
    return tuple(n for n in schema.names if n != "batch_id")


@dataclass
class MicroBatch:
    batch_id: str
    trades: dict[tuple[str, str], Columns] = field(default_factory=dict)   # (product_id, date) -> rows
    ticker: dict[tuple[str, str], Columns] = field(default_factory=dict)
    book: dict[tuple[str, str], Columns] = field(default_factory=dict)
    gaps: dict[str, Columns] = field(default_factory=dict)                 # date -> rows
    rejects: dict[str, Columns] = field(default_factory=dict)

    def add_trade(self, product: str, day: str, row: tuple) -> None:
        self._rows(self.trades, (product, day), TRADES_SCHEMA).append(row)

    def add_ticker(self, product: str, day: str, row: tuple) -> None:
        self._rows(self.ticker, (product, day), TICKER_SCHEMA).append(row)

    def add_book(self, product: str, day: str, row: tuple) -> None:
        self._rows(self.book, (product, day), BOOK_SCHEMA).append(row)

    def add_gap(self, day: str, row: tuple) -> None:
        self._rows(self.gaps, day, GAPS_SCHEMA).append(row)

    def add_reject(self, day: str, row: tuple) -> None:
        self._rows(self.rejects, day, REJECTS_SCHEMA).append(row)

    @staticmethod
    def _rows(target: dict, key, schema: pa.Schema) -> Columns:
        rows = target.get(key)
        if rows is None:
            rows = target[key] = Columns(_names(schema))
        return rows

    @property
    def empty(self) -> bool:
        return not (self.trades or self.ticker or self.book or self.gaps or self.rejects)

    def counts(self) -> dict[str, int]:
        return {name: sum(len(c) for c in getattr(self, name).values())
                for name in ("trades", "ticker", "book", "gaps", "rejects")}


class Sink(Protocol):
    """Destination of micro-batches (see the module docstring)."""

    def write(self, batch: MicroBatch) -> list[str]:
        """Make `batch` durable; return what was written (paths, topic offsets...)."""
        ...

    def close(self) -> None: ...


STREAM_TABLES = (TRADES_DIR, TICKER_DIR, BOOK_DIR, GAPS_DIR, REJECTS_DIR)


def maintain(store: Store, before: date) -> tuple[int, int]:
    """Optimize the stream tables' partitions of days before the day before `before` (a batch file every commit
    interval becomes one file per partition; yesterday's and today's keep their batch files, which the fresh-trades
    trigger reads by name), then vacuum them. Returns (files compacted away, files deleted)."""
    lake, closed = Lake.of(store), (before - timedelta(days=1)).isoformat()
    compacted = deleted = 0
    for root in STREAM_TABLES:
        compacted += lake.optimize(root, partition=[("date", "<", closed)]).get("numFilesRemoved", 0)
        deleted += len(lake.vacuum(root))
    return compacted, deleted


class BronzeSink:
    """The embedded sink: each bronze table (trades, ticker, order_book, stream_gaps, stream_rejects) is a Delta
    table (etl/lake.py). A batch writes one Parquet file per (table, partition), `<batch_id>.parquet`, atomically,
    then appends them to their table in one Delta commit per table carrying the batch id. Readers take the
    tables' logs, so a crash loses the batch being collected (at most one commit interval) and never exposes a
    file no commit names."""

    def __init__(self, store: Store):
        self.store = store
        self.lake = Lake.of(store)

    def write(self, batch: MicroBatch) -> list[str]:
        written = []
        # gaps first: a trade-bar build that sees a batch's trades also sees the gaps that cut them
        for root, parts, schema, keys in (
                (GAPS_DIR, batch.gaps, GAPS_SCHEMA, ("date",)),
                (TRADES_DIR, batch.trades, TRADES_SCHEMA, ("product_id", "date")),
                (TICKER_DIR, batch.ticker, TICKER_SCHEMA, ("product_id", "date")),
                (BOOK_DIR, batch.book, BOOK_SCHEMA, ("product_id", "date")),
                (REJECTS_DIR, batch.rejects, REJECTS_SCHEMA, ("date",))):
            files = []
            for key, rows in sorted(parts.items()):
                partition = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
                name = f"{partition_path('', **partition)}/{batch.batch_id}.parquet"
                table = rows.table(schema, batch.batch_id)
                path = self.store.write_parquet(posixpath.join(root, name), table)
                files.append(DataFile(name, self.store.fs.get_file_info(path).size, partition, table.num_rows))
                written.append(path)
            if files:  # the batch's rows of this table become visible here
                self.lake.commit_files(root, files, pa.schema([*schema, *(pa.field(k, pa.string()) for k in keys)]),
                                       keys, metadata={"batch_id": batch.batch_id})
        return written

    def close(self) -> None:
        pass
