"""`python -m etl report`: the end-of-day reports, read from the `gold` schema as the `reporting` role.

Writes, under `reports_dir(settings)/<as_of>/` (a local folder: `{PIPELINE_DATA_DIR}/reports/` when the data dir
is local, `{PIPELINE_STATE_DIR}/reports/` when it is an object store URI):
  report.html        the self-contained HTML risk report (charts inline, opens offline): first screen,
                     bounded portfolio table, market, pipeline
  portfolios.html    every portfolio; portfolio-<id>.html: the detail pages (charts) of the top portfolios
  data/<name>.csv    the gold rows behind the HTML report's charts and tables
  sql/<name>.csv     one CSV per `sql/**/*.sql` report (none for a gold table or SQL report that fails: a rerun
                     leaves no CSV of an earlier run)
  sql_reports.md     the SQL reports as Markdown tables (opening INCOMPLETE, naming what, on an incomplete day)
  status.json        written last: {"as_of", "complete", "problems", "run_id"}; `latest_report` (the cockpit's
                     default report) is the newest day whose status says complete, so an incomplete report (a
                     mistaken future --as-of, a half-loaded day) never replaces a complete one
Alerts for limit breaches are a separate step: `etl.report.alerts.send_alerts`.
Files are 0600 and folders 0700. Before anything is written, `completeness.check` asks whether every input of the
as-of day is in gold and fresh; if not, the HTML opens with a red INCOMPLETE banner and `run` raises
IncompleteInputError (exit code 3) naming what is missing. A SQL report that fails or a section that cannot be drawn
is a note in the page and, likewise, a problem of the day (not complete, exit 3).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

from etl.db import reporting_url
from etl.errors import IncompleteInputError
from etl.settings import PROJECT_ROOT, Settings, get_settings

log = logging.getLogger(__name__)

__all__ = ["latest_report", "report_of_run", "reports_dir", "run_report"]

STATUS_FILE = "status.json"


def reports_dir(settings: Settings | None = None) -> Path:
    settings = settings or get_settings()
    if settings.is_local_data:
        return Path(settings.data_dir.removeprefix("file://")) / "reports"
    return settings.state_dir / "reports"


def _statuses(settings: Settings | None = None) -> list[tuple[Path, dict]]:
    """(report.html, its status) of every day's report, newest day first; a report without a readable status (a
    crash before the end, an older version) has status {}."""
    found = []
    for page in reports_dir(settings).glob("*/report.html"):
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", page.parent.name):
            continue
        try:
            status = json.loads((page.parent / STATUS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            status = {}
        found.append((page, status if isinstance(status, dict) else {}))
    return sorted(found, key=lambda item: item[0].parent.name, reverse=True)


def latest_report(settings: Settings | None = None) -> Path | None:
    """report.html of the newest day whose report is complete; the newest report of any kind only when none is
    complete (it says INCOMPLETE at the top); None when there is no report."""
    reports = _statuses(settings)
    complete = [page for page, status in reports if status.get("complete") is True]
    return (complete or [page for page, _ in reports] or [None])[0]


def report_of_run(run_id: str, settings: Settings | None = None) -> Path | None:
    """report.html written by this pipeline run (its status names the run), if it is still that run's."""
    return next((page for page, status in _statuses(settings) if status.get("run_id") == run_id), None)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


@contextmanager
def private_files(*dirs: Path) -> Iterator[None]:
    """Files created inside are 0600 and folders 0700 (umask 077); `dirs` are made 0700 too. Reports hold book
    values and positions: readable by the pipeline's user only."""
    old = os.umask(0o077)
    try:
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o700)
        yield
    finally:
        os.umask(old)


def run_report(as_of: date | None = None, settings: Settings | None = None, sql_dir: Path | None = None,
               run_id: str | None = None) -> Path:
    """Write the SQL reports and the HTML report for `as_of` (default: latest as_of_date in gold.fact_risk_metrics).

    `sql_dir` (default: the project's `sql/`) holds the SQL report files; `run_id` (the pipeline run writing it)
    goes into status.json. Returns the path of report.html.
    """
    # imported here: `etl.report.alerts` (and DAG parsing) should not pay for matplotlib
    from etl.report import completeness
    from etl.report import html as html_report
    from etl.report.data import load_report_data
    from etl.report.gold import GoldReader
    from etl.report.sql_reports import run_sql_reports

    settings = settings or get_settings()
    sql_dir = sql_dir or PROJECT_ROOT / "sql"
    with GoldReader(reporting_url(settings)) as reader:
        as_of = as_of or reader.latest_as_of()
        status = completeness.check(reader, as_of, settings)
        out_dir = reports_dir(settings) / as_of.isoformat()
        with private_files(reports_dir(settings), out_dir, out_dir / "sql"):
            (out_dir / STATUS_FILE).unlink(missing_ok=True)  # until the new status is written: not complete
            sql_results = run_sql_reports(reader, as_of, out_dir, sql_dir, status.problems, status.notices)
        data = load_report_data(reader, as_of, status)
    data.failures += [f"SQL report {r.name} failed: {r.error}" for r in sql_results if r.error]

    with private_files(out_dir / "data"):
        for name, frame in data.frames.items():
            if frame is not None:
                frame.to_csv(out_dir / "data" / f"{name}.csv", index=False)
            else:  # no rows of an earlier run beside this report: a rerun leaves what a clean run leaves
                (out_dir / "data" / f"{name}.csv").unlink(missing_ok=True)
        links = {"SQL reports (Markdown)": "sql_reports.md", "data CSVs": "data/"}
        rendered = html_report.pages(data, links=links)
        # a SQL report or section the report could not show: the day's report is not complete (status, banner, exit 3)
        status.problems += data.failures
        files = {name: completeness.with_banner(text, status) if name.endswith(".html") else text
                 for name, text in rendered.items()}
        for stale in out_dir.glob("portfolio-*.html"):  # a portfolio no longer detailed: no stale page left behind
            if stale.name not in files:
                stale.unlink()
        for name, text in files.items():  # report.html last: its links resolve as soon as it is replaced
            if name != "report.html":
                _write_atomic(out_dir / name, text)
        path = out_dir / "report.html"
        _write_atomic(path, files["report.html"])
        _write_atomic(out_dir / STATUS_FILE, json.dumps({"as_of": as_of.isoformat(), "complete": status.complete,
                                                         "problems": status.problems, "run_id": run_id}))
    log.info("report for %s: %s (%d SQL reports; %d failed SQL reports or sections; %d data notes)", as_of, path,
             len(sql_results), len(data.failures), len(data.notes))
    if not status.complete:  # never a green report over missing data: the page says INCOMPLETE, the exit code 3
        raise IncompleteInputError(f"report for {as_of} is INCOMPLETE ({path} says so): "
                                   + "; ".join(status.problems))
    return path
