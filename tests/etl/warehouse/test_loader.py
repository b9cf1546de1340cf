"""The warehouse loader against the real Postgres: COPY upsert, incremental file state, atomicity, roles."""

from __future__ import annotations

import posixpath
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import psycopg2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from etl import db
from etl.commits import RUNS, publish, risk_manifest
from etl.errors import ValidationError
from etl.lake import Lake
from etl.settings import PROJECT_ROOT, get_settings
from etl.storage import get_store
from etl.warehouse import WarehouseError, copy_upsert, load_warehouse, reporting_url, schema, setup
from etl.warehouse.schema import TABLES
from tests.support import warehouse_sample as sample
from tests.support.silver_sample import commit_silver, silver_file

DAYS = 2


@pytest.fixture
def warehouse(pg_url, data_dir, tmp_path, monkeypatch):
    """A clean warehouse database, a data dir holding the sample data set, the sample reference files."""
    monkeypatch.setenv("PIPELINE_DATABASE_URL", pg_url)
    monkeypatch.setenv("PIPELINE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("PIPELINE_REFERENCE_DIR", str(sample.write_reference(tmp_path / "reference")))
    with db.connect(url=pg_url) as conn, conn.cursor() as cur:
        cur.execute("drop schema if exists raw, staging, gold cascade")
    counts = sample.write_sample(get_settings(), first_day=date(2026, 1, 1), days=DAYS)
    return counts


def _commit(store, table: str, partition: str, rows: pa.Table) -> None:
    """Write and commit one output file as the risk/factor stages do (etl/commits.py)."""
    publish(store, f"test/{table}/{partition}", "test", {(table, partition): rows})


def query(sql: str, params=None, url: str | None = None) -> list[tuple]:
    with db.connect(url=url) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def test_copy_upsert_inserts_replaces_by_key_and_keeps_last_duplicate(pg_url):
    with db.connect(url=pg_url) as conn, conn.cursor() as cur:
        cur.execute("drop table if exists public.upsert_t")
        cur.execute("create table public.upsert_t (k text, t timestamptz, v double precision, s text, "
                    "primary key (k, t))")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    first = pd.DataFrame({"k": ["a", "b"], "t": [t0, t0], "v": [1.5, 2.0], "s": ["x,\"y", None]})
    second = pd.DataFrame({"k": ["b", "b", "c"], "t": [t0, t0, t0], "v": [3.0, 4.0, float("inf")], "s": ["", "z", "c"]})
    with db.connect(url=pg_url) as conn:
        conn.cursor().execute("set time zone 'Asia/Tokyo'")  # timestamps stay UTC whatever the session's zone
        assert copy_upsert(conn, "public.upsert_t", first, ["k", "t"]) == 2
        assert copy_upsert(conn, "public.upsert_t", second, ["k", "t"]) == 2  # b once (last wins), c
    rows = query("select k, t, v, s from public.upsert_t order by k", url=pg_url)
    assert rows == [("a", t0, 1.5, 'x,"y'), ("b", t0, 4.0, "z"), ("c", t0, float("inf"), "c")]


def test_copy_upsert_of_streamed_files_round_trips_every_value_an_empty_first_file_included(pg_url):
    with db.connect(url=pg_url) as conn, conn.cursor() as cur:
        cur.execute("drop table if exists public.stream_t")
        cur.execute("create table public.stream_t (k text primary key, s text, v double precision, d date, "
                    "t timestamptz, b boolean)")
    t0 = datetime(2026, 3, 31, 10, 5, tzinfo=UTC)
    columns = {"k": pa.string(), "s": pa.string(), "v": pa.float64(), "d": pa.date32(),
               "t": pa.timestamp("us", tz="UTC"), "b": pa.bool_()}
    values = {"k": ["a", "b", "c", "d"], "s": [None, "", 'com,ma "quoted"\nnew\\line', "naïve ₿ 日本"],
              "v": [float("nan"), float("-inf"), 0.1, None], "d": [date(2026, 3, 31), None, date(1999, 12, 31), None],
              "t": [t0, None, t0, t0], "b": [True, False, None, True]}
    empty = pa.table({c: pa.array([], type) for c, type in columns.items()})
    files = [empty, pa.table({c: pa.array(v[:1], columns[c]) for c, v in values.items()}), empty,
             pa.table({c: pa.array(v[1:], columns[c]) for c, v in values.items()})]
    with db.connect(url=pg_url) as conn:  # a file with no rows first: the NUL-byte CSV it once made is not sent
        assert copy_upsert(conn, "public.stream_t", iter(files), ["k"]) == 4
    rows = query("select k, s, v, d, t, b from public.stream_t order by k", url=pg_url)
    assert [r[:2] for r in rows] == list(zip(values["k"], values["s"], strict=True))  # null stays null, '' stays ''
    assert str(rows[0][2]) == "nan" and rows[1][2] == float("-inf") and rows[2][2] == 0.1 and rows[3][2] is None
    assert [r[3] for r in rows] == values["d"] and [r[4] for r in rows] == values["t"]
    assert [r[5] for r in rows] == values["b"]


def test_load_copies_every_table_and_a_rerun_changes_nothing(warehouse):
    summary = load_warehouse(run_dbt=False)
    for table in ("bars_5m", "bars_1d", "positions_valued", "portfolio_valuation", "pnl_daily", "risk_metrics",
                  "asset_risk", "anomalies", "var_backtest", "limit_breaches", "factor_returns",
                  "factor_exposures", "factor_membership", "pipeline_runs"):
        assert summary.rows[table] == warehouse[table], table
        assert query(f"select count(*) from raw.{table}")[0][0] == warehouse[table], table
    assert summary.rows["portfolios"] == 2 and summary.rows["positions"] == 4
    assert summary.files["bars_5m"] == 3 * DAYS  # one file per product per day
    # silver's product_id comes from the partition path; values and types survive the COPY
    bars = sample.bars_5m(date(2026, 1, 1), DAYS)
    first = bars[bars["product_id"] == "ETH-USD"].iloc[0]
    got = query("select bucket_start, open, close, n_candles, is_complete from raw.bars_5m "
                "where product_id = 'ETH-USD' order by bucket_start limit 1")[0]
    assert got == (first["bucket_start"].to_pydatetime(), first["open"], first["close"], 5, True)
    assert "rows from" in str(summary) and "bars_5m=" in str(summary)

    before = query("select count(*), max(loaded_at) from raw.bars_5m")
    again = load_warehouse(run_dbt=False)
    assert again.total_rows == 0 and sum(again.files.values()) == 0
    assert "nothing new" in str(again)
    assert query("select count(*), max(loaded_at) from raw.bars_5m") == before


def test_a_rewritten_partition_replaces_its_rows_only(warehouse):
    load_warehouse(run_dbt=False)
    store = get_store()
    rel = _silver_rel(store, "silver/bars_5m/product_id=BTC-USD/date=2026-01-02/part-0.parquet")
    table = pq.read_table(store.path(rel))
    _rewrite(store, rel, table.set_column(table.column_names.index("close"), "close", pa.array([1.0] * table.num_rows)))
    summary = load_warehouse(run_dbt=False)
    assert summary.rows == {**{t.name: 0 for t in TABLES}, "bars_5m": 288}
    assert query("select count(*), min(close), max(close) from raw.bars_5m where product_id = 'BTC-USD' "
                 "and bucket_start >= '2026-01-02'") == [(288, 1.0, 1.0)]
    assert query("select count(*) from raw.bars_5m")[0][0] == warehouse["bars_5m"]


def test_a_failure_midway_rolls_back_every_table(warehouse):
    load_warehouse(run_dbt=False)
    before = query("select sum(close) from raw.bars_5m")[0][0]
    state_before = query("select count(*) from raw._load_state")[0][0]
    store = get_store()
    # new bars for BTC (loaded first), then a pnl file whose daily_pnl cannot be read as a number
    rel = _silver_rel(store, "silver/bars_5m/product_id=BTC-USD/date=2026-01-01/part-0.parquet")
    table = pq.read_table(store.path(rel))
    _rewrite(store, rel, table.set_column(table.column_names.index("close"), "close", pa.array([2.0] * table.num_rows)))
    bad = pa.table({"portfolio_id": ["P001"], "as_of_date": [date(2026, 1, 9)], "daily_pnl": ["oops"],
                    "mtd_pnl": [1.0]})
    with pytest.raises(ValidationError, match=r"outputs/pnl_daily: the new rows do not fit the table's column types"):
        _commit(store, "pnl_daily", "as_of_date=2026-01-09", bad)  # the Delta table's types refuse it at the commit
    # a file the loader cannot read as declared: it lacks daily_pnl (the table reads it as NULL)
    _commit(store, "pnl_daily", "as_of_date=2026-01-09", bad.drop_columns(["daily_pnl"]))
    with pytest.raises(ValidationError, match=r"pnl_daily/run_as_of_date=2026-01-09.*daily_pnl"):
        load_warehouse(run_dbt=False)
    assert query("select sum(close) from raw.bars_5m")[0][0] == before
    assert query("select count(*) from raw._load_state")[0][0] == state_before

    # a row Postgres rejects (NULL key) after the bars were upserted: rolled back too, the error names the table
    _commit(store, "pnl_daily", "as_of_date=2026-01-09", bad.set_column(0, "portfolio_id", pa.array([None], pa.string()))
                        .set_column(2, "daily_pnl", pa.array([1.0])))
    with pytest.raises(WarehouseError, match=r"raw\.pnl_daily.*outputs/pnl_daily/run_as_of_date=2026-01-09/[0-9a-f-]+"
                                             r".*rolled back"):
        load_warehouse(run_dbt=False)
    assert query("select sum(close) from raw.bars_5m")[0][0] == before

    Lake.of(store).delete(RUNS, "name = 'test/pnl_daily/as_of_date=2026-01-09'")  # the bad commit withdrawn
    assert load_warehouse(run_dbt=False).rows["bars_5m"] == 288  # the retried files load once the bad one is gone
    assert query("select max(close) from raw.bars_5m where product_id = 'BTC-USD' "
                 "and bucket_start < '2026-01-02'")[0][0] == 2.0


def test_a_missing_declared_column_is_a_clear_error(warehouse):
    table = pa.table({"factor_name": ["market"], "bucket_start": [datetime(2026, 1, 5, tzinfo=UTC)]})
    _commit(get_store(), "factor_returns", "date=2026-01-05", table)
    with pytest.raises(ValidationError, match=r"factor_returns/date=2026-01-05.*missing column\(s\) \['factor_return'\]"):
        load_warehouse(run_dbt=False)


def test_reporting_role_reads_gold_only(warehouse, pg_url):
    setup()
    setup()  # idempotent
    load_warehouse(run_dbt=False)
    with db.connect(url=pg_url) as conn, conn.cursor() as cur:
        cur.execute("create table gold.t_probe as select 1 as x")  # as if dbt had built it
    url = reporting_url()
    assert "reporting" in url and pg_url.split("?")[0].rsplit("/", 1)[1] in url
    assert query("select current_user, x from gold.t_probe", url=url) == [("reporting", 1)]
    for sql in ("select count(*) from raw.bars_5m", "select count(*) from raw._load_state"):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            query(sql, url=url)
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):  # sessions are read-only by default...
        query("insert into gold.t_probe values (2)", url=url)
    for sql in ("insert into gold.t_probe values (2)", "update gold.t_probe set x = 3", "delete from gold.t_probe",
                "create table gold.t_new (x int)", "create view staging.v as select 1",
                "insert into raw.pipeline_runs (record_id) values ('x')"):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):  # ...and no write is granted anyway
            query(f"set transaction read write; {sql}", url=url)
    assert query("select count(*) from gold.t_probe") == [(1,)]


KILLED_LOAD = """
import sys, time
import etl.warehouse.loader as loader

real = loader.copy_upsert

def slow_upsert(conn, table, df, key, **kwargs):
    written = real(conn, table, df, key, **kwargs)
    if table == "raw.bars_5m":
        print("upserted", written, flush=True)
        time.sleep(120)  # killed here, inside the open transaction
    return written

loader.copy_upsert = slow_upsert
from etl.warehouse import load_warehouse
load_warehouse(run_dbt=False)
"""


def test_a_load_killed_mid_transaction_leaves_the_previous_rows(warehouse):
    load_warehouse(run_dbt=False)
    before = query("select count(*), sum(close), max(loaded_at) from raw.bars_5m")
    store = get_store()
    rel = _silver_rel(store, "silver/bars_5m/product_id=SOL-USD/date=2026-01-02/part-0.parquet")
    table = pq.read_table(store.path(rel))
    _rewrite(store, rel, table.set_column(table.column_names.index("close"), "close", pa.array([7.0] * table.num_rows)))
    child = subprocess.Popen([sys.executable, "-c", KILLED_LOAD], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().split() == ["upserted", "288"]
    finally:
        child.kill()  # SIGKILL: no rollback from the client; Postgres aborts the transaction
        child.wait(timeout=30)
    assert query("select count(*), sum(close), max(loaded_at) from raw.bars_5m") == before
    assert load_warehouse(run_dbt=False).rows["bars_5m"] == 288  # the next run loads the file the killed run did not commit
    assert query("select max(close) from raw.bars_5m where product_id = 'SOL-USD' "
                 "and bucket_start >= '2026-01-02'")[0][0] == 7.0


GATED_LOAD = """
import sys
import etl.warehouse.loader as loader
from etl.cli import main

real_read = loader._CopyStream.read
held = []

def read(self, size=-1):  # the first COPY of Store files waits, mid-COPY, until the test has killed its backend
    if "source_file" in self.columns and not held:
        held.append(1)
        print("copying", flush=True)
        sys.stdin.readline()
    return real_read(self, size)

loader._CopyStream.read = read
sys.exit(main(["load", "--no-dbt"]))
"""


def test_postgres_killing_the_copy_is_one_line_exit_2_and_a_rerun_equals_a_clean_load(warehouse, pg_url):
    """Issue 29 item 3: the server ends the backend in the middle of `load`'s COPY (pg_terminate_backend, a real
    server-side kill of that connection). It was a traceback ending `InterfaceError: connection already closed` (the
    rollback ran on the dead connection) and a line blaming a data file. Now: one line naming the outage and what to
    do, exit 2, nothing committed; the rerun loads exactly what a clean load does."""
    child = subprocess.Popen([sys.executable, "-c", GATED_LOAD], cwd=PROJECT_ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "copying\n"
    killed = query("select a.query, pg_terminate_backend(a.pid) from pg_stat_activity a "
                   "where a.datname = current_database() and a.query like 'copy raw.%% from stdin%%'")
    assert len(killed) == 1 and killed[0][1] is True
    table = killed[0][0].split()[1]
    _, err = child.communicate("go\n")
    assert child.returncode == 2
    assert err == (f"error: {table}: the warehouse connection was lost during the load (OperationalError: server "
                   "closed the connection unexpectedly); nothing was committed, the previous rows are kept. "
                   "Check that the server is up (`python -m etl db status`), then rerun `python -m etl load`\n")
    assert query("select count(*) from raw._load_state") == [(0,)]  # not one table committed
    assert query(f"select count(*) from {table}") == [(0,)]

    summary = load_warehouse(run_dbt=False)
    for name, rows in warehouse.items():
        assert summary.rows[name] == rows, name
        assert query(f"select count(*) from raw.{name}")[0][0] == rows, name
    bars = sample.bars_5m(date(2026, 1, 1), DAYS)
    assert query("select sum(close) from raw.bars_5m")[0][0] == pytest.approx(bars["close"].sum(), rel=1e-12)


def test_the_raw_load_line_says_nothing_of_dbt_and_the_summary_says_what_dbt_did(warehouse, caplog):
    """Issue 29 item 3: the loader logged "... ; dbt not run" and then ran dbt. The line logged after the raw load
    (before any dbt) is about raw only; the summary printed at the end says what happened to dbt."""
    import logging

    with caplog.at_level(logging.INFO, logger="etl.warehouse"):
        summary = load_warehouse(run_dbt=False)
    logged = ["warehouse load:" + line.split("warehouse load:", 1)[1]  # as emitted, not formatted afterwards
              for line in caplog.text.splitlines() if "warehouse load:" in line]
    assert logged == [f"warehouse load: {summary.total_rows} rows from {sum(summary.files.values())} files "
                      f"({', '.join(f'{t}={n}' for t, n in summary.rows.items() if n)})"]
    assert str(summary) == f"{logged[0]}; dbt not run (--no-dbt)"


def test_drawdowns_and_daily_anomalies_load_by_key_and_the_latest_run_wins(warehouse):
    summary = load_warehouse(run_dbt=False)
    daily = sample.daily_from_5m(sample.bars_5m(date(2026, 1, 1), DAYS))
    ret = daily.pivot(index="price_date", columns="product_id", values="close").pct_change().iloc[1]  # day 2
    # drawdowns: 2 portfolios + 3 assets for the one as-of day with a return; a rise is no drawdown (NULL dates)
    assert summary.rows["drawdowns"] == warehouse["drawdowns"] == 5
    got = {r[0]: r[1:] for r in query(
        "select entity_id, max_drawdown, peak_date, trough_date, recovery_date, window_start, window_end "
        "from raw.drawdowns where entity_type = 'asset' and as_of_date = '2026-01-02'")}
    for product, r in ret.items():
        if r < 0:
            assert got[product] == (pytest.approx(r), date(2026, 1, 1), date(2026, 1, 2), None,
                                    date(2026, 1, 1), date(2026, 1, 2)), product
        else:
            assert got[product] == (0.0, None, None, None, date(2026, 1, 1), date(2026, 1, 2)), product
    assert query("select max_drawdown from raw.drawdowns where entity_type = 'portfolio' and entity_id = 'P001'") == [
        (pytest.approx(min(ret["BTC-USD"], 0.0)),)]  # P001 holds only BTC: its return is BTC's

    # anomalies_daily: each product's day-2 return flagged; SOL's infinite z-score survives the COPY
    assert summary.rows["anomalies_daily"] == 3
    rows = query("select product_id, price_date, return_value, robust_z, scale_method, as_of_date "
                 "from raw.anomalies_daily order by product_id")
    assert [(p, d, v) for p, d, v, *_ in rows] == [(p, date(2026, 1, 2), pytest.approx(ret[p])) for p in sample.PRODUCTS]
    sol = rows[2]
    assert sol[3] == (float("inf") if ret["SOL-USD"] > 0 else float("-inf")) and sol[4] == "none"
    assert {r[5] for r in rows} == {date(2026, 1, 2)}

    # a later as-of run flags ETH's day again with another score: the same key, so its row is replaced
    eth = pa.table({"product_id": ["ETH-USD"], "price_date": [date(2026, 1, 2)], "return_value": [ret["ETH-USD"]],
                    "robust_z": [-9.5], "scale_method": ["mad"], "window": [60], "threshold": [3.5]})
    _commit(get_store(), "anomalies_daily", "as_of_date=2026-01-03", eth)
    assert load_warehouse(run_dbt=False).rows["anomalies_daily"] == 1
    assert query("select count(*) from raw.anomalies_daily") == [(3,)]
    assert query("select robust_z, as_of_date from raw.anomalies_daily where product_id = 'ETH-USD'") == [
        (-9.5, date(2026, 1, 3))]  # as_of_date filled from the partition path


def test_an_empty_output_file_loads_nothing_and_a_drawdown_without_trough_is_an_error(warehouse):
    load_warehouse(run_dbt=False)
    store = get_store()
    # pandas writes the columns of an empty frame as float64 (the risk engine on a day without anomalies)
    empty = pa.table({c: pa.array([], pa.float64()) for c in ("product_id", "bucket_start", "return_value",
                                                                "robust_z")})
    _commit(store, "anomalies", "as_of_date=2026-01-05", empty)
    summary = load_warehouse(run_dbt=False)
    assert summary.files["anomalies"] == 1 and summary.rows["anomalies"] == 0
    assert query("select count(*) from raw._load_state where path like '%anomalies/run_as_of_date=2026-01-05%'") == [
        (1,)]

    bad = pa.table({"entity_type": ["asset"], "entity_id": ["BTC-USD"], "as_of_date": [date(2026, 1, 5)],
                    "max_drawdown": [-0.1], "peak_date": [date(2026, 1, 1)], "recovery_date": [None]})
    _commit(store, "drawdowns", "as_of_date=2026-01-05", bad)
    with pytest.raises(ValidationError, match=r"drawdowns/run_as_of_date=2026-01-05.*missing column\(s\) \['trough_date'\]"):
        load_warehouse(run_dbt=False)


def test_a_partition_rewritten_with_fewer_rows_or_deleted_loses_its_stale_rows(warehouse):
    load_warehouse(run_dbt=False)
    store = get_store()
    day2 = _silver_rel(store, "silver/bars_5m/product_id=BTC-USD/date=2026-01-02/part-0.parquet")
    day1 = _silver_rel(store, "silver/bars_5m/product_id=ETH-USD/date=2026-01-01/part-0.parquet")
    # silver rebuilt BTC's day 2 without its last bar (e.g. a bad late correction was quarantined) ...
    table = pq.read_table(store.path(day2))
    _rewrite(store, day2, table.slice(0, table.num_rows - 1))
    # ... and removed ETH's day 1 altogether (every candle of the day quarantined)
    table = pq.read_table(store.path(day1))
    Lake.of(store).commit_files("silver/bars_5m", [], pa.schema([*table.schema, *(pa.field(k, pa.string()) for k in (
        "product_id", "date"))]), ["product_id", "date"], remove=[day1])
    load_warehouse(run_dbt=False)
    assert query("select count(*) from raw.bars_5m where product_id = 'BTC-USD' "
                 "and bucket_start >= '2026-01-02'")[0][0] == 287
    assert query("select count(*) from raw.bars_5m where product_id = 'ETH-USD' "
                 "and bucket_start < '2026-01-02'")[0][0] == 0
    assert query("select count(*) from raw.bars_5m")[0][0] == warehouse["bars_5m"] - 289
    assert query("select count(*) from raw._load_state where path = %s", (day1,))[0][0] == 0
    assert load_warehouse(run_dbt=False).total_rows == 0  # and the next run has nothing to do


def _silver_rel(store, rel: str) -> str:
    """The current file of the silver partition `rel` names (relative to the data root)."""
    return posixpath.relpath(silver_file(Path(store.root), rel), store.root)


def _rewrite(store, rel: str, table: pa.Table) -> None:
    """Silver rebuilt the partition of file `rel` with `table` (a new file committed in place of `rel`)."""
    folder = posixpath.dirname(rel)
    commit_silver(store, "/".join(folder.split("/")[:2]), [(dict(p.split("=", 1) for p in folder.split("/")[2:]), table)])


def _cli(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    import os

    return subprocess.Popen([sys.executable, "-m", "etl", *args], cwd=PROJECT_ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_load_against_a_dead_database_url_is_one_line_exit_2(tmp_path):
    import socket

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _cli("load", env={"PIPELINE_DATABASE_URL": f"postgresql://etl:hunter2@127.0.0.1:{port}/warehouse",
                             "PIPELINE_STATE_DIR": str(tmp_path / "state"), "PIPELINE_DATA_DIR": str(tmp_path)})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err and "hunter2" not in err
    assert err.startswith(f"error: cannot connect to the warehouse at postgresql://etl:***@127.0.0.1:{port}/warehouse")
    assert "PIPELINE_DATABASE_URL" in err


def test_two_loads_at_once_wait_for_the_lock_or_fail_naming_it(warehouse, pg_url):
    """The warehouse lock (held here as a running load would hold it): a load with a short wait fails with a clear
    message and changes nothing; a load that may wait runs once the holder is done."""
    from etl.warehouse.loader import warehouse_lock

    with warehouse_lock(get_settings()):
        impatient = _cli("load", "--no-dbt", env={"PIPELINE_WAREHOUSE_LOCK_TIMEOUT_S": "1"})
        patient = _cli("load", "--no-dbt", env={"PIPELINE_WAREHOUSE_LOCK_TIMEOUT_S": "120"})
        out, err = impatient.communicate(timeout=60)
        assert impatient.returncode == 2
        assert "another load or dbt build holds the warehouse lock" in err and "etl warehouse lock pid" in err
        assert "waited 1s (PIPELINE_WAREHOUSE_LOCK_TIMEOUT_S)" in err and err.count("\n") == 1
        with pytest.raises(subprocess.TimeoutExpired):
            patient.wait(timeout=2)                                         # still waiting for us
        assert query("select to_regclass('raw.bars_5m')") == [(None,)]      # nothing loaded meanwhile
    out, err = patient.communicate(timeout=120)
    assert patient.returncode == 0, err
    assert query("select count(*) from raw.bars_5m")[0][0] == warehouse["bars_5m"]


def test_the_generated_dbt_files_match_the_declaration():
    from etl.warehouse import dbt_files

    stale = [str(p.relative_to(PROJECT_ROOT)) for p in dbt_files.stale()]
    assert stale == [], f"{stale} are out of date: run `make dbt-files` and commit them"


def test_every_gold_column_has_a_type_and_a_description_and_the_marts_enforce_their_contract():
    import yaml

    from etl.warehouse import dbt_files

    marts = yaml.safe_load(dbt_files.render()[dbt_files.MODELS / "marts" / "_marts__models.yml"])["models"]
    assert [m["name"] for m in marts] == list(schema.GOLD)
    for model in marts:
        assert model["config"]["contract"] == {"enforced": True}, model["name"]
        assert all(c["data_type"] and c["description"] for c in model["columns"]), model["name"]
    risk = next(m for m in marts if m["name"] == "fact_risk_metrics")
    vol = next(c for c in risk["columns"] if c["name"] == "vol_ewma")
    assert vol["data_type"] == "double precision" and "annualised" in vol["description"].lower()


def test_a_stage_output_with_an_undeclared_or_a_missing_column_fails_naming_table_and_column():
    declared = schema.BY_NAME["asset_risk"].column_names
    schema.check_output("asset_risk", declared + ["log_return"])  # declared as not loaded: fine
    with pytest.raises(ValidationError, match=r"output asset_risk: column\(s\) \['vol_60d'\] are not declared"):
        schema.check_output("asset_risk", [*declared, "vol_60d"])
    with pytest.raises(ValidationError, match=r"output asset_risk: declared column\(s\) \['vol_ewma'\] are not"):
        schema.check_output("asset_risk", [c for c in declared if c != "vol_ewma"])
    with pytest.raises(ValidationError, match="output table 'asset_risks' is not declared"):
        schema.check_output("asset_risks", declared)
    schema.check_output("factor_membership", [c for c in schema.BY_NAME["factor_membership"].column_names
                                              if c != "date"], partition=["date"])


@pytest.mark.slow
def test_every_runs_task_rows_reach_gold_after_one_light_load(warehouse):
    """The end of day's own load/dbt/report/alert rows and the previous intraday run's rows (its light load and
    alerts included) are in gold.fact_pipeline_runs after the next intraday run's light load."""
    from etl import runlog
    from etl.orchestration import tasks
    from etl.orchestration.airflow_adapter import TaskRef

    def intraday_run(run_id: str) -> None:
        tasks.load_intraday_warehouse(ref=TaskRef(run_id, "market_data_intraday", "load_intraday_warehouse"))
        runlog.record(runlog.RunRecord(run_id, "market_data_intraday", "send_intraday_alerts"))

    for task_id in ("load_warehouse", "build_dbt", "export_report", "send_alerts"):  # after the EOD's own load
        runlog.record(runlog.RunRecord("eod_run", "risk_end_of_day", task_id, message=f"{task_id} ok"))
    intraday_run("intraday_1")
    intraday_run("intraday_2")
    written = runlog.read_all()
    in_gold = {r[0] for r in query("select record_id from gold.fact_pipeline_runs")}
    missed = written[~written["record_id"].isin(in_gold)]
    assert sorted(zip(missed["run_id"], missed["task_id"], strict=True)) == [               # only the run in progress
        ("intraday_2", "load_intraday_warehouse"), ("intraday_2", "send_intraday_alerts")]
    assert len(in_gold) == len(written) - 2 > warehouse["pipeline_runs"]
    assert query("select task_id, status, message from gold.fact_pipeline_runs where run_id = 'eod_run' "
                 "order by task_id") == [(t, "success", f"{t} ok") for t in
                                         ("build_dbt", "export_report", "load_warehouse", "send_alerts")]


def test_the_versions_a_run_read_load_as_rows_of_raw_run_inputs(warehouse):
    from etl.lake import note_read, records_reads

    store = get_store(get_settings())

    @records_reads
    def a_run() -> str:
        note_read("silver/bars_1d", 4)
        note_read("outputs/_runs", 7)
        rows = pa.table({"portfolio_id": ["P1"], "var": [1.0]})   # a table the warehouse does not load
        return publish(store, "test/inputs", "test", {("scenario_portfolios", "as_of_date=2026-01-02"): rows})["run_id"]

    run_id = a_run()
    load_warehouse(run_dbt=False)
    assert query("select run_id, commit_name, stage, input_table, input_version from raw.run_inputs "
                 "order by input_table") == [(run_id, "test/inputs", "test", "outputs/_runs", 7),
                                             (run_id, "test/inputs", "test", "silver/bars_1d", 4)]


def _anomalies() -> list[tuple]:
    return query("select product_id, price_date, robust_z, as_of_date, source_file from raw.anomalies_daily "
                 "order by product_id, price_date")


def _from_scratch() -> list[tuple]:
    """raw.anomalies_daily as a clean load of the same committed files gives it."""
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute("drop schema raw cascade")
    load_warehouse(run_dbt=False)
    return _anomalies()


def test_a_rerun_of_an_earlier_as_of_day_keeps_the_later_runs_rows_and_loads_as_a_clean_load(warehouse):
    """History tables repeat a key in the files of several as-of runs; the latest as-of file wins (docs/warehouse.md),
    whatever order the runs were loaded in: an incremental load equals a clean load of the same committed files."""
    from etl.commits import risk_manifest

    load_warehouse(run_dbt=False)
    store = get_store()
    day2 = {r[0]: r for r in _anomalies()}
    later = pa.table({"product_id": ["ETH-USD"], "price_date": [date(2026, 1, 2)], "robust_z": [-9.5],
                      "return_value": [0.01], "scale_method": ["mad"], "window": [60], "threshold": [3.5]})
    publish(store, risk_manifest(date(2026, 1, 3)), "risk", {("anomalies_daily", "as_of_date=2026-01-03"): later})
    load_warehouse(run_dbt=False)
    # the day-2 run is rerun (a backfill) after the day-3 run was loaded: ETH keeps the day-3 run's row
    rerun = pa.table({"product_id": ["ETH-USD", "SOL-USD"], "price_date": [date(2026, 1, 2)] * 2,
                      "robust_z": [day2["ETH-USD"][2], 7.0], "return_value": [0.01, 0.02],
                      "scale_method": ["mad"] * 2, "window": [60] * 2, "threshold": [3.5] * 2})
    publish(store, risk_manifest(date(2026, 1, 2)), "risk", {("anomalies_daily", "as_of_date=2026-01-02"): rerun})
    load_warehouse(run_dbt=False)
    incremental = _anomalies()
    eth = next(r for r in incremental if r[0] == "ETH-USD")
    assert (eth[2], eth[3]) == (-9.5, date(2026, 1, 3))
    assert incremental == _from_scratch()
    # the day-3 run is rerun without ETH: ETH's day-2 row comes back from the day-2 run, which still flags it
    publish(store, risk_manifest(date(2026, 1, 3)), "risk",
            {("anomalies_daily", "as_of_date=2026-01-03"): later.slice(0, 0)})
    load_warehouse(run_dbt=False)
    incremental = _anomalies()
    eth = next((r for r in incremental if r[0] == "ETH-USD"), None)
    assert eth is not None and (eth[2], eth[3]) == (day2["ETH-USD"][2], date(2026, 1, 2))
    assert incremental == _from_scratch()


def test_a_portfolio_whose_var_limit_names_any_registered_var_column_reaches_gold(warehouse, tmp_path):
    """portfolios.csv accepts every VaR column risk writes as var_limit_metric (e.g. var_99_garch_t) and risk checks
    the limit on it: gold's accepted values are the same list, so such a book does not fail the build of gold."""
    from etl.warehouse import run_dbt

    metrics = ["var_99_garch_t", "var_95_evt_gpd"]
    ref = Path(get_settings().reference_dir)
    sample.PORTFOLIOS.assign(var_limit_metric=metrics).to_csv(ref / "portfolios.csv", index=False)
    load_warehouse(run_dbt=False)
    run_dbt("build", select="+dim_portfolio", extra_args=["--indirect-selection", "cautious"])
    assert query("select portfolio_id, var_limit_metric from gold.dim_portfolio order by 1") == \
        list(zip(sample.PORTFOLIOS["portfolio_id"], metrics, strict=True))


def test_an_attempt_that_failed_and_was_retried_is_a_failure_in_gold_and_in_the_failures_report(warehouse):
    """A task whose first attempt raised (up_for_retry: Airflow tries again) then succeeded: the first attempt is a
    failed attempt (fact_pipeline_runs is one row per attempt) and the failures report lists it with its error."""
    from etl import runlog
    from etl.report.sql_reports import bind
    from etl.warehouse import run_dbt

    t0 = datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    for status, minute, message in (("up_for_retry", 0, "SourceError: 503 five times"), ("success", 5, "ok")):
        runlog.record(runlog.RunRecord("retried", "market_data", "fetch_candles", status=status,
                                       started_at=t0.replace(minute=minute), message=message,
                                       try_number=1 + minute // 5))
    load_warehouse(run_dbt=False)
    run_dbt("build", select="+fact_pipeline_runs", extra_args=["--indirect-selection", "cautious"])
    assert query("select try_number, status, is_failure from gold.fact_pipeline_runs where run_id = 'retried' "
                 "order by try_number") == [(1, "up_for_retry", True), (2, "success", False)]
    sql = (PROJECT_ROOT / "sql" / "pipeline_health" / "failures.sql").read_text()
    failed = query(*bind(sql, date(2026, 1, 2)), url=reporting_url())
    assert [(r[1], r[3], r[4], r[6]) for r in failed if r[1] == "retried"] == [
        ("retried", "fetch_candles", 1, "SourceError: 503 five times")]


def _publish_risk_run(store, tables: dict[str, pd.DataFrame], day: str) -> None:
    """Commit the risk run of as-of `day` as the engine writes it: the history tables (valuation, PnL) hold every
    day up to `day`, the other tables only `day`."""
    as_of = pd.Timestamp(day)
    parts = {}
    for name, df in tables.items():
        df = sample.declared(name, df)
        col = "as_of_date" if "as_of_date" in df else "bucket_start"
        days = pd.to_datetime(df[col].astype(str).str[:10])
        part = df[days <= as_of] if name in ("pnl_daily", "portfolio_valuation") else df[days == as_of]
        parts[(name, f"as_of_date={day}")] = pa.Table.from_pandas(part, preserve_index=False)
    publish(store, risk_manifest(date.fromisoformat(day)), "risk", parts)


def test_a_rerun_of_an_earlier_day_after_a_silver_correction_is_refused_naming_the_days_to_rerun(warehouse):
    """Silver corrects BTC's close of Jan 2 after the Jan 4 run; only Jan 2 is rerun. Its positions (Jan 2, at the new
    close) and the Jan 4 run's valuation of Jan 2 (the latest as-of run wins, at the old close) cannot both be gold:
    the load refuses, naming the portfolio, the day, both runs and the days to rerun, and keeps raw as it was; once
    the later days are rerun on the corrected silver, the load takes them and valuation equals the positions."""
    store = get_store()
    b5 = sample.bars_5m(date(2026, 1, 1), 4)
    daily = sample.daily_from_5m(b5)
    for day in ("2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"):
        _publish_risk_run(store, sample.risk_outputs(daily, b5), day)
    load_warehouse(run_dbt=False)
    valuation = "select portfolio_id, as_of_date, market_value, source_file from raw.portfolio_valuation order by 1, 2"
    before = query(valuation)

    fixed = daily.copy()
    jan2 = (fixed["product_id"] == "BTC-USD") & (fixed["price_date"] == pd.Timestamp("2026-01-02"))
    fixed.loc[jan2, ["close", "high"]] *= 1.02
    corrected = sample.risk_outputs(fixed, b5)
    _publish_risk_run(store, corrected, "2026-01-02")
    with pytest.raises(ValidationError) as err:
        load_warehouse(run_dbt=False)
    message = str(err.value)
    assert "P001" in message and "2026-01-02" in message
    assert "run_as_of_date=2026-01-04" in message and "run_as_of_date=2026-01-02" in message
    assert "Rerun `python -m etl risk --as-of D` for every day D from 2026-01-02 to 2026-01-04" in message
    assert query(valuation) == before                                  # nothing loaded: raw (and gold) as before

    for day in ("2026-01-03", "2026-01-04"):                          # the advised reruns, on the corrected silver
        _publish_risk_run(store, corrected, day)
    load_warehouse(run_dbt=False)
    mismatched = query("""
        select v.portfolio_id, v.as_of_date from raw.portfolio_valuation v
        join (select portfolio_id, as_of_date, sum(market_value) as mv from raw.positions_valued group by 1, 2) p
          using (portfolio_id, as_of_date)
        where abs(v.market_value - p.mv) > 1e-6 * greatest(1, abs(p.mv))""")
    assert mismatched == []
    assert query("select count(*), count(distinct (portfolio_id, as_of_date)) from raw.portfolio_valuation") == \
        [(8, 8)]                                                       # reruns replace, never duplicate


def test_a_rerun_leaving_a_portfolio_without_positions_is_refused_when_a_later_run_still_values_it(warehouse):
    """A backdated positions snapshot moves P002's first holdings after Jan 2; the Jan 2 rerun values P002 at nothing
    (no position rows, an empty book's valuation and risk rows) while the Jan 3 run, computed before, still values
    it on Jan 2. A book with no positions sums to 0: the load refuses as for any other disagreement."""
    store = get_store()
    b5 = sample.bars_5m(date(2026, 1, 1), 3)
    daily = sample.daily_from_5m(b5)
    for day in ("2026-01-01", "2026-01-02", "2026-01-03"):
        _publish_risk_run(store, sample.risk_outputs(daily, b5), day)
    load_warehouse(run_dbt=False)
    before = query("select portfolio_id, as_of_date, market_value, source_file from raw.portfolio_valuation order by 1, 2")

    rerun = sample.risk_outputs(daily, b5)
    jan2 = pd.Timestamp("2026-01-02")
    pos = rerun["positions_valued"]
    rerun["positions_valued"] = pos[~((pos["portfolio_id"] == "P002") & (pos["as_of_date"] == jan2))]
    val = rerun["portfolio_valuation"]
    empty = (val["portfolio_id"] == "P002") & (val["as_of_date"] == jan2)
    val.loc[empty, ["market_value", "net_exposure", "gross_exposure", "long_exposure", "short_exposure",
                    "unrealized_pnl"]] = 0.0
    val.loc[empty, "concentration_pct"] = None
    _publish_risk_run(store, rerun, "2026-01-02")
    with pytest.raises(ValidationError, match=r"P002 2026-01-02.*from 2026-01-02 to 2026-01-03"):
        load_warehouse(run_dbt=False)
    assert query("select portfolio_id, as_of_date, market_value, source_file from raw.portfolio_valuation "
                 "order by 1, 2") == before


def test_a_portfolio_whose_contributions_are_all_missing_fails_the_contributions_reconcile_test(warehouse):
    """contributions_reconcile claims 'a total with positions but no contributions fails': a portfolio holding
    positions and a VaR on a day the contributions cover, with none of its contribution rows, must fail the build
    (it passed: the test kept only totals whose portfolio_id and as_of_date each appear somewhere in the components,
    so a portfolio missing from every day was never compared)."""
    from etl.warehouse import run_dbt

    load_warehouse()
    gold = query("select count(*) from gold.fact_risk_contributions")
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute("delete from raw.risk_contributions where scope = 'portfolio' and portfolio_id = 'P002'")
        assert cur.rowcount > 0
    with pytest.raises(WarehouseError) as err:
        run_dbt("build", select="fact_risk_contributions")
    assert "contributions_reconcile_fact_risk_contributions_component_var_99_param__portfolio_id__as_of_date__" \
        "portfolio" in str(err.value)
    assert query("select count(*) from gold.fact_risk_contributions") == gold


def test_the_intraday_light_load_waits_for_a_load_or_build_in_progress(warehouse, pg_url, monkeypatch):
    """A build in progress reads raw model by model: an intraday light load committing raw meanwhile (new intraday
    rows, new run-log rows, edited reference data) would let that build publish, e.g., a fact_intraday_risk holding
    a bucket whose breaches fact_intraday_limit_breaches (built before the commit) lacks. The light load takes the
    warehouse lock like `load`: while another session holds it, the light load waits, then fails naming it, and
    raw is unchanged."""
    from etl import runlog
    from etl.warehouse.loader import WAREHOUSE_LOCK_ID, load_intraday

    load_warehouse(run_dbt=False)
    runs = query("select count(*) from raw.pipeline_runs")
    runlog.record(runlog.RunRecord("intraday_1", "market_data_intraday", "compute_intraday_risk"))
    monkeypatch.setenv("PIPELINE_WAREHOUSE_LOCK_TIMEOUT_S", "1")
    holder = db.open_connection(pg_url, application_name="a build in progress")
    holder.autocommit = True
    try:
        with holder.cursor() as cur:
            cur.execute("select pg_advisory_lock(%s)", (WAREHOUSE_LOCK_ID,))
        with pytest.raises(WarehouseError, match="another load or dbt build holds the warehouse lock"):
            load_intraday(run_dbt=False)
        assert query("select count(*) from raw.pipeline_runs") == runs
    finally:
        holder.close()
    load_intraday(run_dbt=False)
    assert query("select count(*) from raw.pipeline_runs") == [(runs[0][0] + 1,)]


def test_a_book_retired_from_portfolios_csv_stays_in_dim_portfolio_not_current_and_gold_builds(warehouse):
    """A desk closes a book: P002 leaves portfolios.csv (and its positions positions.csv) after runs that valued it.
    Its risk rows stay (history), so dim_portfolio keeps it with its attributes as last loaded and is_current
    false, the relationship tests of the facts pass, and the book comes back current when it is added again."""
    from etl.warehouse import run_dbt

    load_warehouse(run_dbt=False)
    ref = Path(get_settings().reference_dir)
    sample.PORTFOLIOS[sample.PORTFOLIOS["portfolio_id"] == "P001"].to_csv(ref / "portfolios.csv", index=False)
    sample.POSITIONS[sample.POSITIONS["portfolio_id"] == "P001"].to_csv(ref / "positions.csv", index=False)
    load_warehouse(run_dbt=False)
    run_dbt("build", select="+dim_portfolio +fact_positions +fact_portfolio_valuation +fact_risk_metrics",
            extra_args=["--indirect-selection", "cautious"])
    assert query("select portfolio_id, name, var_limit, n_positions, is_current from gold.dim_portfolio "
                 "order by 1") == [("P001", "BTC Core", 5_000.0, 1, True),
                                   ("P002", "Long/short majors", 1_000.0, 0, False)]
    assert query("select count(*) from gold.fact_positions where portfolio_id = 'P002'")[0][0] == 3 * DAYS
    sample.PORTFOLIOS.assign(name=["BTC Core", "Majors again"]).to_csv(ref / "portfolios.csv", index=False)
    load_warehouse(run_dbt=False)
    assert query("select portfolio_id, name, is_current from raw.portfolios order by 1") == [
        ("P001", "BTC Core", True), ("P002", "Majors again", True)]


def test_a_product_dropped_from_instruments_csv_stays_in_dim_symbol_not_current_and_gold_builds(warehouse):
    """The desk that held SOL-USD is closed and SOL-USD leaves instruments.csv: its bars and the closed book's
    valued positions stay in raw (history), so dim_symbol keeps it (attributes as last loaded, is_current false)
    and the relationship tests of fact_price_bars and fact_positions pass; the build failed for good before."""
    from etl.warehouse import run_dbt

    load_warehouse(run_dbt=False)
    ref = Path(get_settings().reference_dir)
    sample.PORTFOLIOS[sample.PORTFOLIOS["portfolio_id"] == "P001"].to_csv(ref / "portfolios.csv", index=False)
    sample.POSITIONS[sample.POSITIONS["portfolio_id"] == "P001"].to_csv(ref / "positions.csv", index=False)
    instruments = pd.read_csv(ref / "instruments.csv", dtype=str)
    instruments[instruments["product_id"] != "SOL-USD"].to_csv(ref / "instruments.csv", index=False)
    load_warehouse(run_dbt=False)
    run_dbt("build", select="+dim_symbol +fact_price_bars +fact_positions",
            extra_args=["--indirect-selection", "cautious"])
    assert query("select product_id, base_currency, is_current from gold.dim_symbol "
                 "where product_id in ('BTC-USD', 'SOL-USD') order by 1") == [("BTC-USD", "BTC", True),
                                                                              ("SOL-USD", "SOL", False)]
    assert query("select count(*) from gold.fact_price_bars where product_id = 'SOL-USD'")[0][0] == 288 * DAYS
