"""The command line as a user runs it (`python -m etl ...` in a subprocess): help texts, `db url --role`, a SQL
report file through the real `psql` as the reporting role, `.env` precedence, `reference validate`."""

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
from etl.settings import PROJECT_ROOT

SQL_DIR = PROJECT_ROOT / "sql"
AS_OF = date(2026, 1, 31)


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "etl", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=120)


# ---- SQL reports in psql, as `reporting` ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def gold_url(pg_url):
    from tests.support.report_sample import create_gold, sample_frames

    with db.scratch_database(pg_url, "cli_psql") as url:
        create_gold(url, sample_frames(AS_OF))
        yield url


def _psql(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([db.psql_path(), url, "-X", "--csv", "-v", "ON_ERROR_STOP=1", *args],
                          capture_output=True, text=True, timeout=60)


def test_a_report_file_runs_in_psql_as_reporting_like_in_the_runner(gold_url):
    from etl.report.gold import GoldReader
    from etl.report.sql_reports import bind

    proc = cli("db", "url", "--role", "reporting", env={"PIPELINE_DATABASE_URL": gold_url})
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
def _reference_copy(tmp_path: Path) -> Path:
    import shutil

    folder = tmp_path / "reference"
    shutil.copytree(PROJECT_ROOT / "etl" / "reference_data", folder)
    return folder


def _replace_line(path: Path, line: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")


OFFLINE = {"PIPELINE_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}  # validate must not need a warehouse


def test_reference_validate_lists_every_bad_row_and_loads_nothing(tmp_path):
    folder = _reference_copy(tmp_path)
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


def test_reference_validate_accepts_good_files_and_names_a_missing_one(tmp_path):
    folder = _reference_copy(tmp_path)
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
    from etl.cli import build_parser

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
