"""`python -m etl <command>`: the market-risk pipeline from the command line, one command per stage.

Each command parses its arguments and calls one function of the stage module; errors that users can act on
(bad input, unreachable services) end with a one-line message and exit code 2, never a bare traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from etl import permissions
from etl.errors import PipelineError
from etl.settings import parse_products


def _products(value: str) -> list[str]:
    products = parse_products(value)
    if not products:
        raise argparse.ArgumentTypeError("expected a comma-separated list of products, e.g. BTC-USD,ETH-USD")
    return products


def _iso(value: str) -> datetime:
    try:
        if value.isdigit():
            return datetime.fromtimestamp(int(value), tz=UTC)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO 8601 time (e.g. 2026-01-31T00:00:00Z)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number of seconds")
    return number

DESCRIPTION = ("Market risk for crypto portfolios: fetch Coinbase candles (or the offline simulator's) into bronze "
               "Parquet, build silver 5-minute and daily bars, compute portfolio risk (valuation, PnL, VaR/ES, "
               "drawdown, factor betas, backtests), load the Postgres warehouse and build its dbt gold schema, and "
               "write the SQL and HTML reports. One command per stage; `run` does the whole chain once.")
EPILOG = ("Settings come from the environment or a .env file at the project root (see .env.example). Exit codes: "
          "0 done, 2 bad input (one line says what and where), 3 report refused because an input is missing.")

DB_HELP = """the warehouse (PIPELINE_DATABASE_URL, or the embedded PostgreSQL under PIPELINE_STATE_DIR/pgdata)

  url      print the connection URL, one line psql accepts: psql "$(python -m etl db url --role reporting)"
  start    start the embedded server if it is not running (it keeps running between commands)
  stop     stop the embedded server
  status   external or embedded, running or stopped, and where"""


class _CommandsHelp(argparse.HelpFormatter):
    """argparse's help, with the command list's help column past the longest command name (argparse measures the
    names one indent short, so `migrate-lake` would wrap)."""

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            self._action_max_length += self._indent_increment


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m etl", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=_CommandsHelp)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")

    p = sub.add_parser("simulator", help="serve the Coinbase Exchange public API offline (seeded prices, faults)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for other hosts)")
    p.add_argument("--port", type=int, default=None, help="default: SIMULATOR_PORT or 8765")
    p.add_argument("--seed", type=int, default=None, help="default: SIMULATOR_SEED or 42")
    p.add_argument("--products", type=_products, default=None, help="comma list (default: the whole universe)")
    p.add_argument("--replay", metavar="DIR", default=None, help="serve recorded candle CSVs from DIR")
    p.add_argument("--fail-rate", type=float, default=None, help="fraction of requests answered with a random 5xx")
    p.add_argument("--rate-limit", type=float, default=None, metavar="RPS", help="token bucket refill (default 10/s)")
    p.add_argument("--burst", type=int, default=None, help="token bucket size (default 15)")
    p.add_argument("--latency-ms", type=float, default=None, help="added latency per request")
    p.add_argument("--malformed-rate", type=float, default=None, help="fraction of bodies truncated/malformed")
    p.add_argument("--late-corrections", action="store_true", default=None,
                   help="revise recent candles on a later fetch")
    p.add_argument("--universe", type=int, default=None, metavar="N",
                   help="add N synthetic products SYN001-USD.. (default: SIMULATOR_UNIVERSE or 0)")
    ws = p.add_argument_group("WebSocket feed (docs/streaming.md)")
    ws.add_argument("--ws-port", type=int, default=None, help="default: SIMULATOR_WS_PORT or --port + 1")
    ws.add_argument("--ws-speed", type=float, default=1.0, help="feed seconds per real second (default 1)")
    ws.add_argument("--ws-drop-rate", type=float, default=0.0, help="fraction of messages skipped (sequence gaps)")
    ws.add_argument("--ws-duplicate-rate", type=float, default=0.0, help="fraction of messages sent twice")
    ws.add_argument("--ws-disconnect-every", type=float, default=0.0, metavar="S",
                    help="drop every connection after S seconds")
    ws.add_argument("--ws-stall-every", type=float, default=0.0, metavar="S", help="go silent every S seconds ...")
    ws.add_argument("--ws-stall-s", type=float, default=0.0, metavar="S", help="... for S seconds (no heartbeats)")
    ws.add_argument("--ws-max-queue", type=int, default=0, metavar="N",
                    help="disconnect a slow consumer with more than N unsent messages (0: never)")

    p = sub.add_parser("ingest", help="fetch candles into bronze (incremental from the watermark by default)")
    p.add_argument("--products", type=_products, default=None, help="comma list (default: PIPELINE_PRODUCTS, else the book's)")
    p.add_argument("--start", type=_iso, default=None, help="ISO 8601 start (default: watermark - overlap)")
    p.add_argument("--end", type=_iso, default=None, help="ISO 8601 end, exclusive (default: now)")
    p.add_argument("--granularity", type=int, default=None, help="seconds: 60, 300, 900, 3600, 21600, 86400")
    p.add_argument("--source", choices=["simulator", "coinbase"], default=None, help="default: PIPELINE_SOURCE")

    p = sub.add_parser("silver", help="bronze candles -> silver 5-minute and daily bars")
    p.add_argument("--full-refresh", action="store_true", help="rebuild every partition, not only touched ones")

    p = sub.add_parser("compact", help="compact closed bronze partitions (idempotent, crash-safe)")
    p.add_argument("--before", type=_date, default=None, help="YYYY-MM-DD: days before it (default: today, UTC)")

    sub.add_parser("migrate-lake", help="convert an existing data folder to the current lake format (idempotent, "
                   "crash-safe)")

    p = sub.add_parser("risk", help="portfolio valuation, PnL, VaR/ES, drawdown, anomalies, backtests")
    p.add_argument("--as-of", type=_date, default=None, help="YYYY-MM-DD (default: the last complete UTC day)")
    p.add_argument("--reproduce", metavar="RUN_ID", default=None,
                   help="recompute that committed run of --as-of from the table versions it read (writes nothing "
                        "to the lake); with --output")
    p.add_argument("--output", metavar="DIR", default=None, help="with --reproduce: write its tables here as Parquet")

    p = sub.add_parser("intraday", help="intraday risk of one 5-minute bucket, as the intraday DAG's risk task runs it")
    p.add_argument("--bucket", type=_iso, default=None,
                   help="ISO 8601 start of the bucket (default: the latest closed one; a later one is refused)")

    p = sub.add_parser("factors", help="factor returns and rolling factor exposures")
    p.add_argument("--end", type=_iso, default=None, help="ISO 8601 end, exclusive (default: now)")

    p = sub.add_parser("load", help="outputs -> Postgres raw schema, then dbt build")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--no-dbt", action="store_true", help="load raw only")
    only.add_argument("--dbt-only", action="store_true",
                      help="build and publish gold (write-audit-publish) without loading raw")

    p = sub.add_parser("report", help="SQL reports (CSV, Markdown) and the HTML risk report")
    p.add_argument("--as-of", type=_date, default=None, help="YYYY-MM-DD (default: latest in gold)")

    p = sub.add_parser("run", help="the whole chain once: ingest, silver, risk, factors, load, report")
    p.add_argument("--as-of", type=_date, default=None, help="YYYY-MM-DD (default: the last complete UTC day)")

    p = sub.add_parser("docs", help="generate the dbt docs site (and serve it with --serve)")
    p.add_argument("--serve", action="store_true", help="serve on a local port until interrupted")
    p.add_argument("--port", type=int, default=None,
                   help="port of the docs site (default: PIPELINE_DOCS_PORT or 8090)")

    p = sub.add_parser("stream", help="WebSocket trades and tickers -> bronze until interrupted or --seconds")
    p.add_argument("--products", type=_products, default=None, help="comma list (default: PIPELINE_PRODUCTS, else the book's)")
    p.add_argument("--seconds", type=_positive, default=None, help="stop after N seconds (default: run until stopped)")
    p.add_argument("--source", choices=["simulator", "coinbase"], default=None, help="default: PIPELINE_SOURCE")

    p = sub.add_parser("insights", help="live view of one product: mid, spread, averages, 60 s mid forecast")
    p.add_argument("--product-id", type=str.upper, required=True, help="e.g. BTC-USD")
    p.add_argument("--seconds", type=_positive, default=None, help="quit after N seconds (default: Ctrl-C)")
    p.add_argument("--source", choices=["simulator", "coinbase"], default=None, help="default: PIPELINE_SOURCE")

    p = sub.add_parser("reference", help="your instruments, portfolios, positions and limits: validate [DIR]",
                       description="Check the reference CSVs (instruments, exchanges, portfolios, positions) with "
                                   "the rules the pipeline loads them with. Every bad row is printed as "
                                   "`file:line: rule ...`; exit 2 if there is any. Nothing is loaded anywhere. "
                                   "See docs/own_portfolios.md.")
    p.add_argument("action", choices=["validate"], help="validate: check every row of every file")
    p.add_argument("dir", nargs="?", default=None, metavar="DIR",
                   help="folder with the four CSVs (default: PIPELINE_REFERENCE_DIR or etl/reference_data)")

    p = sub.add_parser("db", help="the warehouse: url|start|stop|status", description=DB_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["url", "start", "stop", "status"], help="see the list above")
    p.add_argument("--role", choices=["owner", "reporting"], default="owner",
                   help="url: whose login (default owner: the pipeline's own user; reporting: the read-only role "
                        "the SQL reports and BI tools use)")
    return parser


def _call(target: str, **kwargs: Any) -> Any:
    """Import `module:function` and call it: stage modules load only for their command (`--help` stays fast)."""
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)(**kwargs)


# The commands that run one stage entry point and print its summary.
STAGE_COMMANDS: dict[str, Callable[[argparse.Namespace, Any], Any]] = {
    "ingest": lambda a, s: _call("etl.bronze:ingest", products=a.products, start=a.start, end=a.end,
                                 granularity=a.granularity, source=a.source, settings=s, progress=True),
    "silver": lambda a, s: _call("etl.silver:build", full_refresh=a.full_refresh, settings=s),
    "compact": lambda a, s: _call("etl.compaction:compact", before=a.before, settings=s),
    "migrate-lake": lambda a, s: _call("etl.migrate:migrate_lake", settings=s),
    "risk": lambda a, s: (_call("etl.risk.reproduce:reproduce", as_of=a.as_of, run_id=a.reproduce, output=a.output,
                                settings=s) if a.reproduce else _call("etl.risk:run_risk", as_of=a.as_of, settings=s)),
    "factors": lambda a, s: _call("etl.factors:run_factors", settings=s, end=a.end),
    "load": lambda a, s: _call("etl.warehouse:load_warehouse", settings=s, run_dbt=not a.no_dbt,
                               dbt_only=a.dbt_only),
    "report": lambda a, s: _call("etl.report:run_report", as_of=a.as_of, settings=s),
    "docs": lambda a, s: _call("etl.warehouse:docs", settings=s, serve=a.serve, port=a.port or s.docs_port),
    "run": lambda a, s: _call("etl.orchestration.tasks:run_all", as_of=a.as_of, settings=s),
}


def dispatch(args: argparse.Namespace) -> int:
    from etl.settings import get_settings

    settings = get_settings()
    cmd = args.command
    if cmd == "db":
        from etl import db

        if args.action == "url":
            if args.role == "reporting":
                from etl.db import reporting_url

                url = reporting_url(settings)
                if not db.role_exists(settings, "reporting"):
                    print("note: the reporting role does not exist yet: `python -m etl load` (or make demo) "
                          "creates it", file=sys.stderr)
                print(url)
            else:
                print(db.database_url(settings))
        elif args.action == "start":
            print(db.status(settings) if settings.database_url else f"embedded: running, {db.start_embedded(settings)}")
        elif args.action == "stop":
            print("stopped" if db.stop_embedded(settings) else "embedded Postgres was not running")
        else:
            print(db.status(settings))
        return 0
    if cmd == "reference":
        return _validate_reference(args.dir, settings)
    if cmd == "simulator":
        from etl.simulator import SimulatorConfig, serve

        def pick(flag, default):
            return default if flag is None else flag

        config = SimulatorConfig(
            host=args.host, port=pick(args.port, settings.simulator_port), seed=pick(args.seed, settings.simulator_seed),
            products=tuple(args.products) if args.products else None, replay_dir=args.replay,
            fail_rate=pick(args.fail_rate, settings.simulator_fail_rate),
            rate_limit_rps=pick(args.rate_limit, settings.simulator_rate_limit_rps),
            burst=pick(args.burst, settings.simulator_burst),
            latency_ms=pick(args.latency_ms, settings.simulator_latency_ms),
            malformed_rate=pick(args.malformed_rate, settings.simulator_malformed_rate),
            late_corrections=pick(args.late_corrections, settings.simulator_late_corrections),
            universe=pick(args.universe, settings.simulator_universe),
            ws_port=pick(args.ws_port, settings.simulator_ws_port if args.port is None else None),
            ws_speed=args.ws_speed, ws_drop_rate=args.ws_drop_rate, ws_duplicate_rate=args.ws_duplicate_rate,
            ws_disconnect_every=args.ws_disconnect_every, ws_stall_every=args.ws_stall_every,
            ws_stall_s=args.ws_stall_s, ws_max_queue=args.ws_max_queue,
        )
        serve(config)
        return 0
    if cmd in STAGE_COMMANDS:
        print(STAGE_COMMANDS[cmd](args, settings))
        return 0
    if cmd == "intraday":
        from etl.orchestration.tasks import compute_intraday_risk
        from etl.risk.intraday import latest_closed_bucket
        from etl.risk.intraday_io import IntradaySummary

        bucket = args.bucket or latest_closed_bucket(datetime.now(UTC))
        print(IntradaySummary(**compute_intraday_risk(bucket, settings=settings)))
        return 0
    if cmd == "stream":
        from etl.reference_set import Reference
        from etl.stream.collector import collect

        collect(args.products or Reference(settings).products_to_ingest(), seconds=args.seconds, source=args.source,
                settings=settings)
        return 0
    if cmd == "insights":
        from etl.stream.insights import run_insights

        run_insights(args.product_id, seconds=args.seconds, source=args.source, settings=settings)
        return 0
    raise AssertionError(cmd)


def _validate_reference(directory: str | None, settings) -> int:
    """`reference validate [DIR]`: every problem on stdout, a summary on stderr, exit 2 when there is any."""
    import dataclasses
    from pathlib import Path

    from etl import reference_check
    from etl.reference_set import Reference

    folder = Path(directory) if directory else settings.reference_dir
    if not folder.is_dir():
        print(f"error: {folder}: not a folder (expected instruments.csv, exchanges.csv, portfolios.csv and "
              "positions.csv in it)", file=sys.stderr)
        return 2
    ref = Reference(dataclasses.replace(settings, reference_dir=folder))
    problems = reference_check.reference_problems(ref)
    if problems:
        print("\n".join(problems))
        print(f"error: {len(problems)} problem(s) in {folder}; nothing was loaded", file=sys.stderr)
        return 2
    books = ref.positions
    print(f"ok: {folder}: {len(ref.instruments)} instruments, {len(ref.exchanges)} "
          f"exchanges, {len(ref.portfolios)} portfolios, {len(books)} position rows "
          f"({books[['portfolio_id', 'as_of_date']].drop_duplicates().shape[0]} snapshots); "
          f"set PIPELINE_REFERENCE_DIR={folder.resolve()} to use them")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "reproduce", None) and not (args.as_of and args.output):
        parser.error("risk --reproduce RUN_ID needs --as-of D (the run's day) and --output DIR")
    if getattr(args, "output", None) and not getattr(args, "reproduce", None):  # else a new run replaces the day's
        parser.error("risk --output DIR is only for --reproduce RUN_ID (recompute a committed run); without it "
                     "`risk` commits a new run to the lake")
    permissions.owner_only()  # data, state and secrets this command writes: its user's only (etl.permissions)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return dispatch(args)
    except KeyboardInterrupt:
        return 130
    except (PipelineError, ValueError, OSError) as exc:
        if args.verbose:
            raise
        from etl.redaction import redact_text

        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)  # 3: IncompleteInputError (report refused on missing inputs)
    except Exception as exc:
        psycopg2 = sys.modules.get("psycopg2")  # a warehouse outage outside the stages' own handling
        if args.verbose or psycopg2 is None or not isinstance(exc, psycopg2.InterfaceError | psycopg2.OperationalError):
            raise
        from etl.redaction import redact_text

        reason = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: the warehouse connection failed ({type(exc).__name__}: {redact_text(reason)}): check that "
              f"the server is up (`python -m etl db status`), then rerun `python -m etl {args.command}`",
              file=sys.stderr)
        return 2
