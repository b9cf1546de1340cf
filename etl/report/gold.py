"""Read-only access to the `gold` schema as the `reporting` role.

Every report query goes through `GoldReader`: one connection, one short transaction per query, numbers as floats.
A missing gold table (e.g. a warehouse whose first `dbt build` has not run yet) becomes a note in the report
instead of a crash: `GoldReader.frame` returns None and records what was missing in `notes`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pandas as pd

from etl import db
from etl.db import REPORTING_ROLE
from etl.errors import DataNotFoundError, IncompleteInputError

log = logging.getLogger(__name__)

STATEMENT_TIMEOUT_MS = 120_000  # one report query must not hold the warehouse for longer than this


def _float_numeric(conn) -> None:
    """Postgres numeric -> Python float on this connection (reports do arithmetic and charts, not accounting)."""
    import psycopg2.extensions as ext

    caster = ext.new_type(ext.DECIMAL.values, "NUMERIC_AS_FLOAT", lambda v, cur: None if v is None else float(v))
    ext.register_type(caster, conn)


@dataclass
class GoldReader:
    """A read-only session on gold; collect `notes` about tables that are missing or empty."""

    url: str
    notes: list[str] = field(default_factory=list)
    _conn: Any = None

    def __enter__(self) -> GoldReader:
        import psycopg2

        try:
            options = f"-c default_transaction_read_only=on -c statement_timeout={STATEMENT_TIMEOUT_MS} -c timezone=UTC"
            self._conn = psycopg2.connect(self.url, options=options, application_name="etl-report")
        except psycopg2.OperationalError as exc:
            reason = " ".join(str(exc).split())
            if f'role "{REPORTING_ROLE}" does not exist' in reason:
                todo = "run `python -m etl load` (it creates the role)"
            else:  # the server is down or unreachable: loading cannot help
                todo = ("check that the server is up (`python -m etl db status`; PIPELINE_DATABASE_URL names it), "
                        "then rerun")
            raise DataNotFoundError(f"cannot connect to the warehouse as {REPORTING_ROLE!r} ({db.redact(self.url)}): "
                                    f"{reason}; {todo}") from None
        _float_numeric(self._conn)
        return self

    def __exit__(self, *exc) -> None:
        self._conn.close()

    def query(self, sql: str, params: dict | None = None) -> pd.DataFrame:
        """Run one SELECT; raises psycopg2 errors (the caller decides whether they are fatal)."""
        try:
            with self._conn.cursor() as cur:
                cur.execute(sql, params)
                columns = [d.name for d in cur.description]
                rows = cur.fetchall()
            self._conn.rollback()  # read-only: end the transaction so the next query sees fresh data
        except Exception:
            self._conn.rollback()
            raise
        return pd.DataFrame.from_records(rows, columns=columns)

    def frame(self, table: str, sql: str, params: dict | None = None) -> pd.DataFrame | None:
        """Like `query`, but a missing table or column gives None and a note naming `gold.<table>`."""
        import psycopg2.errors as pgerr

        try:
            return self.query(sql, params)
        except (pgerr.UndefinedTable, pgerr.UndefinedColumn, pgerr.InsufficientPrivilege) as exc:
            first_line = str(exc).strip().splitlines()[0]
            note = f"gold.{table} could not be read ({first_line}): this section is left out."
            if note not in self.notes:
                self.notes.append(note)
            log.warning("report: %s", note)
            return None

    def latest_as_of(self) -> date:
        df = self.frame("fact_risk_metrics", "select max(as_of_date) as as_of from gold.fact_risk_metrics")
        if df is None or df.empty or pd.isna(df["as_of"].iat[0]):
            raise IncompleteInputError("gold.fact_risk_metrics has no rows: run `python -m etl risk` and "
                                    "`python -m etl load` first, or pass --as-of")
        return df["as_of"].iat[0]
