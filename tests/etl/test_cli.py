"""The command line as a user runs it (`python -m etl ...`, in a subprocess or through `main`): the exit codes of
the contract (0 done, 2 bad input or usage with one line saying what and where, 3 report refused), the help of
every command, `db url --role`, a SQL report file through the real `psql` as the reporting role, `reference
validate`."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from etl import db
from etl.cli import build_parser, main
from etl.settings import PROJECT_ROOT
from tests.support.reference import write_book
from tests.support.report_sample import AS_OF

SQL_DIR = PROJECT_ROOT / "sql"
DEAD_URL = "postgresql://etl:hunter2@127.0.0.1:1/none"  # nobody listens on port 1


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "etl", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=120)


# ---- exit codes and the one-line error ---------------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "error"), [
    ([], "python -m etl: error: the following arguments are required: <command>"),
    (["ingest", "--start", "yesterday"],
     "python -m etl ingest: error: argument --start: 'yesterday' is not an ISO 8601 time (e.g. 2026-01-31T00:00:00Z)"),
    (["ingest", "--products", " , "],
     "python -m etl ingest: error: argument --products: expected a comma-separated list of products, e.g. "
     "BTC-USD,ETH-USD"),
    (["risk", "--as-of", "2026-02-30"], "python -m etl risk: error: argument --as-of: '2026-02-30' is not a date "
                                        "(YYYY-MM-DD)"),
    (["stream", "--seconds", "-1"], "python -m etl stream: error: argument --seconds: '-1' is not a positive number "
                                    "of seconds"),
    (["insights"], "python -m etl insights: error: the following arguments are required: --product-id"),
    (["db", "drop"], "python -m etl db: error: argument action: invalid choice: 'drop' (choose from "),
    (["nosuch"], "python -m etl: error: argument <command>: invalid choice: 'nosuch'"),
    (["load", "--no-dbt", "--dbt-only"], "python -m etl load: error: argument --dbt-only: not allowed with argument "
                                         "--no-dbt"),
])
def test_bad_usage_exits_2_with_the_argument_and_the_problem(argv, error, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m etl")
    assert err.strip().splitlines()[-1].startswith(error)


def test_a_bad_setting_exits_2_naming_the_setting_and_its_value(monkeypatch, capsys):
    monkeypatch.setenv("PIPELINE_SOURCE", "ftp")
    assert main(["db", "url"]) == 2
    assert capsys.readouterr().err == "error: PIPELINE_SOURCE='ftp': expected 'simulator' or 'coinbase'\n"
    with pytest.raises(ValueError, match="PIPELINE_SOURCE='ftp'"):  # -v: the traceback, for a bug report
        main(["-v", "db", "url"])


def test_a_risk_setting_outside_its_model_exits_2_before_any_work(data_dir, monkeypatch, capsys):
    monkeypatch.setenv("RISK_EWMA_LAMBDA", "1.5")                   # was an EWMA VaR of 5e23, reported as a figure
    assert main(["risk", "--as-of", "2026-03-30"]) == 2
    assert capsys.readouterr().err == ("error: setting RISK_EWMA_LAMBDA=1.5 is out of range: expected strictly "
                                       "between 0 and 1\n")


def test_an_unreachable_warehouse_exits_2_on_one_line_without_the_password(data_dir, monkeypatch, capsys):
    monkeypatch.setenv("PIPELINE_DATABASE_URL", DEAD_URL)
    assert main(["load", "--no-dbt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot connect to the warehouse at postgresql://etl:***@127.0.0.1:1/none: ")
    assert "PIPELINE_DATABASE_URL" in err and err.count("\n") == 1 and "hunter2" not in err
    assert main(["report"]) == 2  # the reporting login: the same one line
    err = capsys.readouterr().err
    assert err.startswith("error: cannot connect to the warehouse as 'reporting' (postgresql://reporting@127.0.0.1:1/"
                          "none): ")
    assert "check that the server is up" in err and "etl load" not in err and err.count("\n") == 1  # issue 29


def test_report_refused_exits_3_naming_the_missing_input(pg_url, data_dir, monkeypatch, capsys):
    """No gold at all: refused, never a green report (a missing day of a built gold: tests/etl/report/test_html.py,
    through the CLI in tests/integration/test_chaos.py)."""
    with db.scratch_database(pg_url, "cli_nogold") as url:
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        assert main(["report"]) == 3
    assert capsys.readouterr().err == ("error: gold.fact_risk_metrics has no rows: run `python -m etl risk` and "
                                       "`python -m etl load` first, or pass --as-of\n")


def test_db_url_exits_0_with_one_line_psql_accepts():
    proc = cli("db", "url", env={"PIPELINE_DATABASE_URL": "postgresql://etl@db.example:5432/warehouse"})
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "postgresql://etl@db.example:5432/warehouse\n", "")


# ---- SQL reports in psql, as `reporting` ----------------------------------------------------------------------
def _psql(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([db.psql_path(), url, "-X", "--csv", "-v", "ON_ERROR_STOP=1", *args],
                          capture_output=True, text=True, timeout=60)


def test_a_report_file_runs_in_psql_as_reporting_like_in_the_runner(sample_gold_url):
    from etl.report.gold import GoldReader
    from etl.report.sql_reports import bind

    proc = cli("db", "url", "--role", "reporting", env={"PIPELINE_DATABASE_URL": sample_gold_url})
    assert proc.returncode == 0, proc.stderr
    url = proc.stdout.strip()
    assert "\n" not in url and url.startswith("postgresql://reporting@")

    path = SQL_DIR / "risk_exposure" / "var_backtest_exceptions.sql"  # a report the sample gold has rows for
    earlier_day = date(2026, 1, 20)
    dated = _psql(url, "-v", f"as_of={earlier_day}", "-f", str(path))
    assert dated.returncode == 0, dated.stderr
    rows = list(csv.DictReader(io.StringIO(dated.stdout)))
    with GoldReader(url) as reader:  # the report runner's path: the same file, bound by psycopg2
        expected = reader.query(*bind(path.read_text(), earlier_day))
        newest = reader.query(*bind(path.read_text(), None))
    assert len(rows) == len(expected) > 1 and list(rows[0]) == list(expected.columns)
    assert [(r["portfolio_id"], r["method"]) for r in rows] == list(zip(expected["portfolio_id"], expected["method"], strict=True))
    assert [int(r["n_days"]) for r in rows] == expected["n_days"].tolist()
    assert [float(r["exception_rate"]) for r in rows] == pytest.approx(expected["exception_rate"].tolist())
    assert {r["last_day"] for r in rows} == {earlier_day.isoformat()}
    # `-v as_of=` (empty) is the latest day in gold, like the runner's None
    latest = _psql(url, "-v", "as_of=", "-f", str(path))
    assert latest.returncode == 0, latest.stderr
    latest_rows = list(csv.DictReader(io.StringIO(latest.stdout)))
    assert {r["last_day"] for r in latest_rows} == {AS_OF.isoformat()} == set(newest["last_day"].astype(str))
    assert [int(r["n_days"]) for r in latest_rows] == newest["n_days"].tolist()

    # the login is the read-only reporting role
    who = _psql(url, "-c", "select current_user")
    assert who.stdout.split() == ["current_user", "reporting"]
    write = _psql(url, "-c", "create table gold.should_fail (i int)")
    assert write.returncode != 0 and ("read-only transaction" in write.stderr or "permission denied" in write.stderr)


def test_every_report_file_uses_only_the_psql_variable():
    from etl.report.sql_reports import AS_OF as PLACEHOLDER
    from etl.report.sql_reports import bind, discover

    for path in discover(SQL_DIR):
        sql = path.read_text()
        assert PLACEHOLDER in sql and "%(" not in sql, path
        bound, params = bind(sql, None)
        assert ":'as_of'" not in bound and params == {"as_of": None}
    assert bind("where d = nullif(:'as_of', '')::date and p like 'BTC%'", AS_OF) == (
        "where d = nullif(%(as_of)s, '')::date and p like 'BTC%%'", {"as_of": "2026-01-31"})


# ---- reference validate ------------------------------------------------------------------------------------------
def _replace_line(path: Path, line: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")


OFFLINE = {"PIPELINE_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}  # validate must not need a warehouse


def test_reference_validate_lists_every_bad_row_and_loads_nothing(reference_copy, tmp_path):
    folder = reference_copy
    _replace_line(folder / "instruments.csv", 3, "ETH-USD,ETH,USD,kraken,crypto_major,Ether / US Dollar")
    _replace_line(folder / "portfolios.csv", 3, "P002,ETH Heavy,USD,lots,0.6,0.9,")
    _replace_line(folder / "portfolios.csv", 5, "P004,Layer1 Basket,USD,400000,1.5,0.9,")
    with open(folder / "portfolios.csv", "a") as f:  # line 24
        f.write("P001,BTC Core again,USD,400000,0.6,0.9,\n")
    _replace_line(folder / "positions.csv", 2, "P999,BTC-USD,2024-06-01,11.1111,76500")
    _replace_line(folder / "positions.csv", 3, "P002,BTC-USD,2024-13-01,2.22222,76500")
    _replace_line(folder / "positions.csv", 5, "P002,LINK-USD,2024-06-01,0,13.6")
    data = tmp_path / "data"
    proc = cli("reference", "validate", str(folder), env={**OFFLINE, "PIPELINE_DATA_DIR": str(data)})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stdout.splitlines()
    expected = [
        [f"{folder}/instruments.csv:3", "unknown exchange_id 'kraken' (known: ['coinbase'])"],
        [f"{folder}/portfolios.csv:3", "non-numeric"],
        [f"{folder}/portfolios.csv:5", "concentration_limit outside (0, 1]"],
        [f"{folder}/portfolios.csv:24", "duplicate portfolio_id"],
        [f"{folder}/positions.csv:2", "unknown portfolio"],
        [f"{folder}/positions.csv:3", "unparsable date"],
        [f"{folder}/positions.csv:5", "quantity = 0"],
    ]
    assert len(lines) == len(expected), proc.stdout
    for line, (place, rule) in zip(lines, expected, strict=True):
        assert line.startswith(f"{place}: {rule}"), line
    assert proc.stderr.strip() == f"error: 7 problem(s) in {folder}; nothing was loaded"
    assert not data.exists()  # nothing written anywhere (and no warehouse reachable: none needed)


def test_reference_validate_refuses_a_position_that_outlives_its_instrument_and_accepts_an_empty_portfolio(
        reference_copy):
    """docs/own_portfolios.md: a portfolio without positions is valid (worth 0); a snapshot dated after its
    product's delisted_on is not."""
    folder = reference_copy
    with open(folder / "portfolios.csv", "a") as f:
        f.write("P999,Empty Book,USD,400000,0.6,0.9,\n")
    ok = cli("reference", "validate", str(folder), env=OFFLINE)
    assert ok.returncode == 0 and ok.stdout.startswith(f"ok: {folder}: 13 instruments, 1 exchanges, 23 portfolios")
    lines = (folder / "instruments.csv").read_text().splitlines()
    (folder / "instruments.csv").write_text("\n".join(
        [f"{lines[0]},delisted_on"] + [f"{r},{'2025-01-01' if r.startswith('LINK-USD,') else ''}" for r in lines[1:]])
        + "\n")
    with open(folder / "positions.csv", "a") as f:
        f.write("P002,LINK-USD,2025-06-02,6250,13.6\n")
    n = len((folder / "positions.csv").read_text().splitlines())
    proc = cli("reference", "validate", str(folder), env=OFFLINE)
    assert proc.returncode == 2
    assert proc.stdout.splitlines() == [
        f"{folder}/positions.csv:{n}: position outlives its instrument: LINK-USD was delisted on 2025-01-01 "
        "(instruments.csv) but this snapshot of 2025-06-02 still holds it: drop the row or correct delisted_on"]


def write_own_book(folder: Path) -> Path:
    """A book of products the shipped sample does not have (AAVE-USD, and ETH-BTC's conversion BTC-USD), one
    portfolio without a drawdown limit."""
    return write_book(
        folder,
        "AAVE-USD,AAVE,USD,coinbase,crypto_defi,Aave / US Dollar\n"
        "ETH-BTC,ETH,BTC,coinbase,crypto_major,Ether / Bitcoin\n"
        "BTC-USD,BTC,USD,coinbase,crypto_major,Bitcoin / US Dollar\n",
        "portfolio_id,name,base_currency,var_limit,concentration_limit,drawdown_limit\n"
        "DEFI,DeFi and a cross,USD,1000000,0.9,\n",
        "portfolio_id,product_id,as_of_date,quantity,avg_cost\nDEFI,AAVE-USD,2024-01-01,100,90\n"
        "DEFI,ETH-BTC,2024-01-01,10,0.05\n")


def test_reference_validate_checks_pipeline_products_against_an_own_book(tmp_path):
    """The issue's case: an own book, validate said ok, the run then failed on PIPELINE_PRODUCTS. Unset, the
    products are the book's; set to products the master lacks, validate says so naming the setting."""
    folder = write_own_book(tmp_path / "book")
    ok = cli("reference", "validate", str(folder), env={**OFFLINE, "PIPELINE_PRODUCTS": ""})
    assert ok.returncode == 0 and ok.stdout.startswith(f"ok: {folder}: 3 instruments, 1 exchanges, 1 portfolios")
    bad = cli("reference", "validate", str(folder), env={**OFFLINE, "PIPELINE_PRODUCTS": "BTC-USD,SOL-USD,DOGE-USD"})
    assert bad.returncode == 2
    assert bad.stdout.splitlines() == [f"setting PIPELINE_PRODUCTS: SOL-USD, DOGE-USD not in the instrument master "
                                       f"({folder}/instruments.csv): add them there, or unset PIPELINE_PRODUCTS to "
                                       "ingest what the book holds"]


def test_reference_validate_accepts_good_files_and_names_a_missing_one(reference_copy, tmp_path):
    folder = reference_copy
    ok = cli("reference", "validate", str(folder), env=OFFLINE)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith(f"ok: {folder}: 13 instruments, 1 exchanges, 22 portfolios")
    (folder / "positions.csv").unlink()
    missing = cli("reference", "validate", str(folder), env=OFFLINE)
    assert missing.returncode == 2
    assert missing.stdout.splitlines() == [f"{folder}/positions.csv: reference file not found "
                                           "(set PIPELINE_REFERENCE_DIR to its folder)"]
    assert cli("reference", "validate", str(tmp_path / "nope"), env=OFFLINE).returncode == 2


# ---- help texts --------------------------------------------------------------------------------------------------
def test_help_says_what_the_tool_and_each_option_does():
    parser = build_parser()
    top = parser.format_help()
    assert "Market risk for crypto portfolios" in top and "platform contract" not in top
    assert ".env" in top
    subparsers = parser._subparsers._group_actions[0].choices
    for name, sub in subparsers.items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"`{name} {'/'.join(action.option_strings) or action.dest}` has no help"
    assert "PIPELINE_DOCS_PORT or 8090" in subparsers["docs"].format_help()
    db_help = subparsers["db"].format_help()
    for action in ("url", "start", "stop", "status", "--role"):
        assert action in db_help


# the contract's commands and the options it names (../shared/CONTRACT.md)
CONTRACT_OPTIONS = {
    "simulator": ["--host", "--port", "--seed", "--products", "--replay", "--fail-rate", "--rate-limit", "--burst",
                  "--latency-ms", "--malformed-rate", "--late-corrections", "--universe"],
    "ingest": ["--products", "--start", "--end", "--granularity", "--source"],
    "silver": ["--full-refresh"],
    "risk": ["--as-of"],
    "load": ["--no-dbt", "--dbt-only"],
    "report": ["--as-of"],
    "run": [],
    "db": ["url", "start", "stop", "status", "--role"],
    "factors": ["--end"],
    "compact": ["--before"],
    "stream": ["--products", "--seconds", "--source"],
    "insights": ["--product-id", "--seconds"],
    "reference": ["validate", "DIR"],
}


@pytest.mark.parametrize("command", sorted(CONTRACT_OPTIONS))
def test_every_contract_command_has_help_naming_its_options(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: python -m etl {command} ")
    for option in CONTRACT_OPTIONS[command]:
        assert option in text, f"`{command} --help` does not mention {option}"


def test_top_level_help_in_a_real_process_lists_every_command():
    proc = cli("--help")
    assert proc.returncode == 0 and proc.stderr == ""
    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(CONTRACT_OPTIONS) <= set(commands)
    for name in commands:
        assert f"    {name} " in proc.stdout, name


def test_a_warehouse_connection_lost_outside_a_stages_own_handling_is_one_line_exit_2(pg_url, monkeypatch, capsys):
    """Issue 29 item 3: the server ending a session (here its own backend, really terminated) wherever it happens
    is one line naming the outage and the command to rerun, not a psycopg2 traceback."""
    from etl import cli, db

    def killed(args, settings):
        with db.connect(url=pg_url, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("select pg_terminate_backend(pg_backend_pid())")

    monkeypatch.setitem(cli.STAGE_COMMANDS, "report", killed)
    assert cli.main(["report"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the warehouse connection failed (OperationalError: server closed the connection "
                          "unexpectedly")
    assert err.endswith("): check that the server is up (`python -m etl db status`), then rerun "
                        "`python -m etl report`\n") and err.count("\n") == 1
