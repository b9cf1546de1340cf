"""The binary COPY encoding against the real Postgres: every value the loader sends arrives as a parameterised
INSERT of the same values stores it; the producer thread ends with every COPY, sent, refused or failed."""

from __future__ import annotations

import io
import threading
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from etl import db
from etl.errors import ValidationError
from etl.warehouse import WarehouseError, copy_binary, copy_upsert, loader

COLUMNS = "k bigint primary key, s text, v double precision, d date, t timestamptz, b boolean, n bigint"


def _table(name: str, url: str) -> None:
    with db.connect(url=url) as conn, conn.cursor() as cur:
        cur.execute(f"drop table if exists public.{name}")
        cur.execute(f"create table public.{name} ({COLUMNS})")


def _rows(n: int, seed: int = 1) -> pa.Table:
    """n rows with a NULL in every column somewhere, and the edges of each type."""
    rng = np.random.default_rng(seed)
    t0 = datetime(2026, 3, 31, 10, 5, 7, 123456, tzinfo=UTC)
    texts = ["", "plain", 'com,ma "q"\nnew\\line\t', "naïve ₿ 日本", "x" * 300]
    floats = [0.1, 2.5, float("inf"), float("-inf"), 1e308, 5e-324, float("nan")]
    cells = {
        "k": list(range(n)),
        "s": [None if i % 7 == 3 else texts[i % len(texts)] for i in range(n)],
        "v": [None if i % 5 == 1 else floats[i % len(floats)] * rng.uniform(0.5, 2) for i in range(n)],
        "d": [None if i % 6 == 2 else date(1999, 12, 31) + timedelta(days=int(i * 37 % 20_000) - 9_000)
              for i in range(n)],
        "t": [None if i % 4 == 0 else t0 + timedelta(microseconds=int(i) * 987_654_321) for i in range(n)],
        "b": [None if i % 3 == 0 else bool(i % 2) for i in range(n)],
        "n": [None if i % 8 == 5 else int(rng.integers(-2**62, 2**62)) for i in range(n)],
    }
    types = {"k": pa.int64(), "s": pa.string(), "v": pa.float64(), "d": pa.date32(),
             "t": pa.timestamp("us", tz="UTC"), "b": pa.bool_(), "n": pa.int64()}
    return pa.table({c: pa.array(v, types[c]) for c, v in cells.items()})


def _select(name: str, url: str) -> list[tuple]:
    with db.connect(url=url) as conn, conn.cursor() as cur:
        cur.execute(f"select k, s, v::text, d, t, b, n from public.{name} order by k")
        return cur.fetchall()


def _producers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "copy-producer"]


def test_binary_copy_stores_what_a_parameterised_insert_stores_across_chunk_ends(pg_url, monkeypatch):
    monkeypatch.setattr(loader, "COPY_CHUNK_ROWS", 17)  # many chunks, parts split across them and sliced
    rows = _rows(400)
    _table("bin_copy", pg_url)
    _table("bin_insert", pg_url)
    parts = [rows.slice(0, 5), rows.slice(5, 0), rows.slice(5, 300), rows.slice(305)]
    with db.connect(url=pg_url) as conn:
        conn.cursor().execute("set time zone 'America/New_York'")  # the binary format carries UTC instants
        assert copy_upsert(conn, "public.bin_copy", iter(parts), ["k"]) == 400
        with conn.cursor() as cur:  # the oracle: psycopg2 adapts each Python value itself
            cur.executemany("insert into public.bin_insert values (%s, %s, %s, %s, %s, %s, %s)",
                            [tuple(r.values()) for r in rows.to_pylist()])
    got, want = _select("bin_copy", pg_url), _select("bin_insert", pg_url)
    assert len(got) == 400 and got == want
    assert not _producers()


def test_encode_of_a_sliced_table_sends_only_the_slice(pg_url):
    rows = _rows(50).slice(10, 20)  # offsets into shared buffers: values, validity bitmaps and string offsets
    _table("bin_slice", pg_url)
    with db.connect(url=pg_url) as conn, conn.cursor() as cur:
        data = io.BytesIO(copy_binary.HEADER + copy_binary.encode(rows) + copy_binary.TRAILER)
        cur.copy_expert("copy public.bin_slice from stdin with (format binary)", data)
    got = _select("bin_slice", pg_url)
    assert [r[0] for r in got] == list(range(10, 30))
    assert [r[1] for r in got] == rows["s"].to_pylist() and [r[6] for r in got] == rows["n"].to_pylist()


def test_a_refused_copy_stops_its_producer_and_the_staged_upsert_gets_every_row(pg_url, monkeypatch):
    monkeypatch.setattr(loader, "COPY_CHUNK_ROWS", 10)
    _table("bin_refused", pg_url)
    rows = _rows(100)
    with db.connect(url=pg_url) as conn:
        assert copy_upsert(conn, "public.bin_refused", rows.slice(0, 3), ["k"]) == 3
        # key 2 again, first: the keyed COPY is refused at once, while the producer still has chunks to make
        parts = [rows.slice(2, 1), *(rows.slice(i, 10) for i in range(3, 100, 10))]
        assert copy_upsert(conn, "public.bin_refused", iter(parts), ["k"]) == 98
    assert [r[0] for r in _select("bin_refused", pg_url)] == list(range(100))
    assert not _producers()


def test_a_producer_error_is_raised_as_itself_and_nothing_is_written(pg_url):
    _table("bin_failed", pg_url)
    rows = _rows(30)

    def parts():
        yield rows.slice(0, 10)
        raise ValidationError("part-7.parquet: unreadable Parquet for raw.bars_5m")

    with db.connect(url=pg_url) as conn, pytest.raises(ValidationError, match="part-7.parquet"):
        copy_upsert(conn, "public.bin_failed", parts(), ["k"])
    assert _select("bin_failed", pg_url) == []
    assert not _producers()


def test_a_column_of_a_type_the_loader_does_not_send_is_named(pg_url):
    with db.connect(url=pg_url) as conn, conn.cursor() as cur:
        cur.execute("drop table if exists public.bin_numeric")
        cur.execute("create table public.bin_numeric (k bigint primary key, x numeric)")
    with db.connect(url=pg_url) as conn, pytest.raises(WarehouseError, match="'x': 'numeric'"):
        copy_upsert(conn, "public.bin_numeric", pa.table({"k": [1], "x": [1.5]}), ["k"])
