"""`make demo`: the pipeline end to end through Airflow, on this machine, with nothing installed.

`python -m etl.local.demo` first checks the reference data and the settings that name it (`reference validate`:
a bad book fails in a second, not after the first DAG), then prepares the SQLite Airflow home under
`{state_dir}/airflow` (etl.local.airflow_home: migrated once, pools and connections set), starts the embedded
Postgres and the exchange simulator (reusing one already answering on SIMULATOR_PORT), records the order books
of the end-of-day as-of day (`record_order_books`: `python -m etl stream` against a simulator feed replaying that
day, for the liquidity-adjusted VaR), runs `airflow dags test market_data_intraday`, then `risk_end_of_day`, then
the intraday DAG again, and prints the task runs, the gold row counts and where the results are. A failed DAG's first error line is its first failed task's message.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from etl.local import run_main
from etl.local.airflow_home import airflow_env, dags_test, fail_unfinished_runs, prepare_home
from etl.local.simulator_process import market_source
from etl.orchestration.spec import EOD_DAG, INTRADAY_DAG
from etl.settings import Settings


def gold_counts(url: str) -> dict[str, int]:
    """Row counts of every table in schema gold."""
    from etl import db

    counts: dict[str, int] = {}
    with db.connect(url=url) as conn, conn.cursor() as cur:
        cur.execute("select table_name from information_schema.tables where table_schema = 'gold' "
                    "and table_type = 'BASE TABLE' order by table_name")
        for (name,) in cur.fetchall():
            cur.execute(f'select count(*) from gold."{name}"')
            counts[name] = int(cur.fetchone()[0])
    return counts


def runs_summary(settings: Settings, run_ids: set[str]) -> list[str]:
    from etl import runlog

    df = runlog.read_all(settings)
    df = df[df["run_id"].isin(run_ids)].sort_values("started_at")
    return [f"  {r.dag_id:<22} {r.task_id:<26} {r.status:<13} {r.duration_s:7.2f}s  in={r.rows_in} out={r.rows_out}"
            for r in df.itertuples()]


def failure_cause(settings: Settings, run_ids: set[str]) -> str | None:
    """`task: message` of the first failed attempt in these runs (what the console's error line leads with)."""
    from etl import runlog

    df = runlog.read_all(settings)
    df = df[df["run_id"].isin(run_ids) & df["status"].isin(["failed", "up_for_retry"])].sort_values("started_at")
    return None if df.empty else f"{df['task_id'].iat[0]}: {df['message'].iat[0]}"


def report_path(settings: Settings, run_ids: set[str]) -> str | None:
    from etl import runlog

    df = runlog.read_all(settings)
    df = df[df["run_id"].isin(run_ids) & (df["task_id"] == "export_report") & (df["status"] == "success")]
    for message in df["message"]:
        if "report=" in message:
            return message.split("report=", 1)[1].strip()
    return None


def next_steps(settings: Settings, report: str | None, as_of, owner_url: str, reporting_url: str,
               alerts: str) -> list[str]:
    """The closing lines of `make demo`: where to look and what to run next, with this configuration's ports."""
    from etl import db

    psql = db.psql_path()
    sql = f"-v as_of={as_of.isoformat()} -f sql/risk_exposure/var_es_by_portfolio.sql"
    lines = []
    if report:
        lines.append(f"   open the report in a browser:  file://{report}")
        lines.append(f"   SQL reports of that run:       {Path(report).parent}/sql_reports.md and sql/*.csv")
    lines += [
        f"   Airflow UI with these runs:    make airflow   -> http://localhost:{settings.airflow_port} "
        "(DAGs start paused; Ctrl-C stops it all)",
        f"   warehouse docs (dbt):          make docs      -> http://localhost:{settings.docs_port}",
        f"   a SQL report in psql:          {psql} '{reporting_url}' {sql}",
        f"   psql, read-only reporting:     {psql} '{reporting_url}'   (= make psql-reporting)",
        f"   psql, owner (read-write):      {psql} '{owner_url}'",
        f"   limit-breach alerts:           {alerts}   (one JSON line per alert)",
        "   your own portfolios:           docs/own_portfolios.md, then python -m etl reference validate DIR",
        "   real Coinbase data:            README.md, section Real Coinbase",
    ]
    return lines


def demo_dates(now: datetime) -> tuple[datetime, datetime]:
    """Logical dates for `airflow dags test`, which treats the date as the end of the run's data interval.

    Intraday: the latest complete 5-minute interval. End of day: today 00:10 UTC, i.e. the interval that
    covers yesterday, so risk is computed as of yesterday (the last complete UTC day).
    """
    intraday = now.replace(second=0, microsecond=0) - timedelta(minutes=now.minute % 5)
    eod = now.replace(hour=0, minute=10, second=0, microsecond=0)
    if eod > now:  # between 00:00 and 00:10 the run for yesterday is not due yet
        eod -= timedelta(days=1)
    return intraday, eod


def record_order_books(settings: Settings, day: date, seconds: float = 8.0):
    """Order books of `day` into bronze/order_book: the collector (etl.stream.collector) for `seconds` against a
    simulator feed (same seed as the REST simulator) replaying `day` from 12:00 UTC 60 times faster, snapshots every
    0.5 s, for the products held. The live collector records today's; a demo's end of day values yesterday."""
    from etl.portfolios import load_positions
    from etl.simulator import Simulator, SimulatorConfig
    from etl.stream.collector import collect

    if settings.source != "simulator":
        return None
    start = datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp()
    sim = Simulator(SimulatorConfig(port=0, seed=settings.simulator_seed, ws_start=start, ws_speed=60.0)).start()
    try:
        products = sorted(load_positions(settings)["product_id"].unique())
        return collect(products, seconds=seconds, settings=replace(settings, stream_book_snapshot_s=0.5),
                       url=sim.ws_url, validate=False)
    finally:
        sim.stop()


def run_demo(settings: Settings) -> int:
    from etl import db
    from etl.reference_check import validate_reference
    from etl.storage import get_store

    if problems := validate_reference(settings=settings):
        print("\n".join(f"error: {p}" for p in problems), file=sys.stderr)
        print(f"error: {len(problems)} problem(s) in the reference data {settings.reference_dir} or the settings "
              "naming it; nothing was started (python -m etl reference validate lists them)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    print(f"starting the embedded Postgres{' and the exchange simulator' if settings.source == 'simulator' else ''}"
          "...", flush=True)
    url = db.database_url(settings)
    sim = market_source(settings)
    env = airflow_env(settings, database_url=settings.database_url)
    prepared = False
    try:
        env.setdefault("PIPELINE_API_POOL_SLOTS", "1")  # `dags test` runs one task at a time: full rate each
        env["PIPELINE_EOD_DEADLINE_HOURS"] = "0"  # `dags test` of 3.3.2 cannot finish a DAG with a deadline
        env["COINBASE_API_URL"] = sim.url
        print(f"preparing the Airflow home {env['AIRFLOW_HOME']}...", flush=True)
        prepare_home(env)
        prepared = True
        _fail_unfinished(env, "an earlier `make demo` that was killed")
        intraday_date, eod_date = demo_dates(datetime.now(UTC))
        from etl.orchestration.intervals import eod_as_of

        print("recording the order books of the end-of-day as-of day (python -m etl stream, 8 s)...", flush=True)
        record_order_books(settings, eod_as_of(eod_date - timedelta(days=1)))
        run_ids: set[str] = set()
        # intraday before and after end of day: the second run revalues the book on the EOD scenario set
        runs = ((INTRADAY_DAG, intraday_date - timedelta(minutes=5)), (EOD_DAG, eod_date), (INTRADAY_DAG, intraday_date))
        for dag_id, when in runs:
            log_file = Path(env["AIRFLOW_HOME"]) / f"demo-{dag_id}.log"
            print(f"airflow dags test {dag_id} {when:%Y-%m-%dT%H:%M}Z ... (follow: tail -f {log_file})", flush=True)
            t = time.perf_counter()
            proc = dags_test(env, dag_id, when, log_file=log_file)
            run_ids |= _run_ids_since(settings, dag_id, t0)
            if proc.returncode != 0:
                cause = failure_cause(settings, run_ids) or f"exit {proc.returncode}"
                print(f"error: {dag_id} failed: {cause}", file=sys.stderr)
                print(f"log: {log_file}", file=sys.stderr)
                print("\n".join(runs_summary(settings, run_ids)), file=sys.stderr)
                return 1
            print(f"  ok in {time.perf_counter() - t:.0f}s (log: {log_file})", flush=True)
        store = get_store(settings)
        print("\n== task runs (run log: one row per task instance; a mapped task has one per product)")
        print("\n".join(runs_summary(settings, run_ids)))
        print(f"\n== warehouse: {db.redact(url)}")
        for table, n in gold_counts(url).items():
            print(f"   gold.{table:<28} {n:>9,} rows")
        report = report_path(settings, run_ids)
        print(f"\n== report: {report or 'not produced (no successful export_report in these runs)'}")
        print(f"== bronze: {store.path('bronze')}")
        print(f"== silver: {store.path('silver')}")
        print(f"== outputs: {store.path('outputs')}")
        from etl.db import reporting_url
        from etl.orchestration.intervals import eod_as_of
        from etl.report.alerts import ALERTS_FILE

        print("\n== what next")
        print("\n".join(next_steps(settings, report, eod_as_of(eod_date - timedelta(days=1)), url,
                                   reporting_url(settings), store.path(ALERTS_FILE))))
        print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s")
        return 0
    finally:
        sim.stop()
        if prepared:  # interrupted (Ctrl-C) in a `dags test`: its run must not stay "running" in Airflow
            _fail_unfinished(env, "this demo, interrupted")


def _fail_unfinished(env: dict[str, str], whose: str) -> None:
    if n := fail_unfinished_runs(env, test_runs=True):
        print(f"marked {n} DAG run(s) left running by {whose} as failed in Airflow", flush=True)


def _run_ids_since(settings: Settings, dag_id: str, t0: float) -> set[str]:
    from etl import runlog

    df = runlog.read_all(settings)
    since = datetime.now(UTC) - timedelta(seconds=time.perf_counter() - t0 + 5)
    df = df[(df["dag_id"] == dag_id) & (df["started_at"] >= since)]
    return set(df["run_id"])



def main(argv: list[str] | None = None) -> int:
    return run_main(run_demo, "python -m etl.local.demo", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
