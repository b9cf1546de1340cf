"""The SQL reports: every `sql/**/*.sql` file is one SELECT on gold, run as the `reporting` role.

Each report becomes `<out_dir>/sql/<name>.csv` (all rows) and a section of `<out_dir>/sql_reports.md`
(first rows as a Markdown table). `<name>` is the file's path under `sql/` with "/" replaced by "__" and no
suffix. A report that fails (a gold table not built yet, a SQL error) is listed with its error in the Markdown
and does not stop the others.

The as-of day is written in psql's variable syntax, `:'as_of'` (a quoted literal: `nullif(:'as_of', '')::date`),
so every file also runs as is in psql: `psql "$(python -m etl db url --role reporting)" -v as_of=2026-01-31 -f
sql/daily_pnl/daily_and_mtd.sql` (`-v as_of=` for the latest day). `bind` turns the same text into a psycopg2
query with the day as a bound parameter.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd

from etl.report.gold import GoldReader
from etl.settings import PROJECT_ROOT

log = logging.getLogger(__name__)

SQL_DIR = PROJECT_ROOT / "sql"
SKIP_DIRS = ("report_html",)  # queries private to the HTML report, not reports of their own
MARKDOWN_MAX_ROWS = 50


@dataclass
class SqlReport:
    name: str
    path: Path
    description: str
    rows: int = 0
    csv_path: Path | None = None
    error: str | None = None


def discover(sql_dir: Path = SQL_DIR) -> list[Path]:
    if not sql_dir.is_dir():
        return []
    files = sorted(p for p in sql_dir.rglob("*.sql") if p.is_file())
    return [p for p in files if not any(part in SKIP_DIRS for part in p.relative_to(sql_dir).parts[:-1])]


def report_name(path: Path, sql_dir: Path = SQL_DIR) -> str:
    return "__".join(path.relative_to(sql_dir).with_suffix("").parts)


def _description(sql: str) -> str:
    """The leading `--` comment lines of a SQL file, joined: that is the report's description."""
    lines = []
    for line in sql.splitlines():
        stripped = line.strip()
        if not stripped:
            if lines:
                break
            continue
        if not stripped.startswith("--"):
            break
        lines.append(stripped.lstrip("-").strip())
    return " ".join(lines)


AS_OF = ":'as_of'"  # psql: `-v as_of=YYYY-MM-DD` interpolates the value as a quoted literal


def bind(sql: str, as_of: date | None) -> tuple[str, dict]:
    """A report file's SQL and parameters for psycopg2: `:'as_of'` becomes a bound parameter (the ISO day, or
    NULL for "latest", like psql's `-v as_of=`); every other '%' is doubled, so `like 'BTC%'` stays a literal."""
    return (sql.replace("%", "%%").replace(AS_OF, "%(as_of)s"),
            {"as_of": as_of.isoformat() if as_of is not None else None})


def run_sql_reports(reader: GoldReader, as_of: date, out_dir: Path, sql_dir: Path = SQL_DIR,
                    problems: list[str] | None = None, notices: list[str] | None = None) -> list[SqlReport]:
    """Run every report; write the CSVs and `sql_reports.md`; return what happened to each. `problems` and
    `notices`: what the day's completeness check found missing, and stale (etl.report.completeness):
    sql_reports.md then opens INCOMPLETE naming them (and any report that failed), and STALE naming the notices, as
    the HTML report's banners: never a clean-looking page over missing or stale data."""
    csv_dir = out_dir / "sql"
    csv_dir.mkdir(parents=True, exist_ok=True)
    results = []
    frames: dict[str, pd.DataFrame] = {}
    for path in discover(sql_dir):
        sql = path.read_text()
        rep = SqlReport(name=report_name(path, sql_dir), path=path, description=_description(sql))
        try:
            df = reader.query(*bind(sql, as_of))
        except Exception as exc:  # any SQL error is this report's failure only
            rep.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}"
            log.warning("SQL report %s failed: %s", path, rep.error)
        else:
            rep.rows = len(df)
            rep.csv_path = csv_dir / f"{rep.name}.csv"
            df.to_csv(rep.csv_path, index=False)
            frames[rep.name] = df
            log.info("SQL report %s: %d rows -> %s", rep.name, rep.rows, rep.csv_path)
        results.append(rep)
    # no earlier run's rows as this day's: the CSV of a report that failed now, or whose file was removed or renamed
    for old in csv_dir.glob("*.csv"):
        if old.stem not in frames:
            old.unlink()
    problems = [*(problems or []), *(f"SQL report {r.name} failed: {r.error}" for r in results if r.error)]
    (out_dir / "sql_reports.md").write_text(markdown(results, frames, as_of, sql_dir, problems, notices))
    return results


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) >= 100 else f"{value:.6g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame, max_rows: int = MARKDOWN_MAX_ROWS) -> str:
    if df.empty:
        return "_no rows_\n"
    head = df.head(max_rows)
    lines = ["| " + " | ".join(str(c) for c in head.columns) + " |",
             "|" + "|".join("---" for _ in head.columns) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in head.itertuples(index=False)]
    if len(df) > max_rows:
        lines.append(f"\n_{len(df) - max_rows} more rows in the CSV_")
    return "\n".join(lines) + "\n"


def markdown(results: list[SqlReport], frames: dict[str, pd.DataFrame], as_of: date, sql_dir: Path,
             problems: list[str] | None = None, notices: list[str] | None = None) -> str:
    out = [f"# SQL reports as of {as_of.isoformat()}\n"]
    if problems:
        out.append(f"**INCOMPLETE**: the inputs of {as_of.isoformat()} are incomplete; these tables do not show the "
                   "whole day: " + "; ".join(_cell(p) for p in problems) + "\n")
    if notices:
        out.append(f"**STALE**: some holdings of {as_of.isoformat()} are valued at an earlier close: "
                   + "; ".join(_cell(n) for n in notices) + "\n")
    out.append(f"Queries from `{sql_dir}` run on the `gold` schema as the `reporting` role.\n")
    if not results:
        out.append(f"_No SQL report files found under `{sql_dir}`._\n")
    for rep in results:
        out.append(f"## {rep.name}\n")
        if rep.description:
            out.append(f"{rep.description}\n")
        out.append(f"Source: `{rep.path.relative_to(sql_dir)}`\n")
        if rep.error:
            out.append(f"**Failed:** `{rep.error}`\n")
        else:
            out.append(f"{rep.rows} rows, CSV: `sql/{rep.name}.csv`\n")
            out.append(markdown_table(frames[rep.name]))
    return "\n".join(out)
