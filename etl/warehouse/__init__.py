"""The gold warehouse: COPY-upsert loads into Postgres `raw`, then dbt builds `staging` views and `gold` marts.

Public API (see docs/warehouse.md):
    load_warehouse(settings=None, run_dbt=True) -> LoadSummary  # setup, load new raw data in one transaction,
                                                         # dbt build (write-audit-publish), all under the warehouse lock
    setup(settings=None)                                 # schemas raw/staging/gold, roles, grants, raw tables
    run_dbt(command="build", settings=None, select=None) # the dbt CLI on dbt_project/
    reporting_url(settings=None) -> str                  # libpq URL logging in as the read-only `reporting` role
    docs(settings=None, serve=False, port=8081) -> Path  # dbt docs generate --static [+ serve]
    copy_upsert(conn, table, df, key) -> int             # the COPY-based upsert primitive
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from etl import db
from etl.db import reporting_url  # named by the warehouse API; it lives with the connection (etl.db)
from etl.settings import Settings, get_settings
from etl.storage import get_store
from etl.warehouse import roles
from etl.warehouse.dbt import docs, run_dbt
from etl.warehouse.loader import LoadSummary, WarehouseError, copy_upsert, load_raw, warehouse_lock
from etl.warehouse.schema import raw_ddl

if TYPE_CHECKING:
    from etl.reference_set import Reference

__all__ = ["LoadSummary", "WarehouseError", "copy_upsert", "docs", "load_warehouse", "reporting_url", "run_dbt", "setup"]

log = logging.getLogger(__name__)


def setup(settings: Settings | None = None) -> None:
    """Create schemas, roles, grants and the raw tables; safe to run any number of times."""
    settings = settings or get_settings()
    with db.connect(settings) as conn:
        with conn.cursor() as cur:
            cur.execute("select pg_advisory_xact_lock(hashtext('etl.warehouse.setup'))")
        present = roles.ensure_roles(conn, settings.reporting_password)
        with conn.cursor() as cur:
            for stmt in raw_ddl():
                cur.execute(stmt)
        roles.grant(conn, present)  # after the DDL: grants cover the raw tables just created


def load_warehouse(settings: Settings | None = None, run_dbt: bool = True, dbt_only: bool = False,
                   reference: Reference | None = None) -> LoadSummary:
    """Load new silver/outputs/reference/run-log data into `raw` (one transaction), then `dbt build`.

    `dbt_only` (`load --dbt-only`): no raw load, only the write-audit-publish build of gold (the safe way to
    rebuild gold by hand: a plain `dbt build` would write `gold` directly, with no shadow and no tests first).
    `reference`: the run's reference data (etl.reference_set; default: the files of `settings`)."""
    settings = settings or get_settings()
    with warehouse_lock(settings):  # one load + build per warehouse; a second waits, then fails naming this one
        setup(settings)
        summary = LoadSummary()
        if not dbt_only:
            with db.connect(settings) as conn:
                summary = load_raw(conn, get_store(settings), settings, reference=reference)
            log.info("%s", summary)
        if run_dbt:
            _run_dbt("build", settings)
            summary.dbt = "build ok"
        else:
            summary.dbt = "not run (--no-dbt)"
    return summary


_run_dbt = run_dbt  # `load_warehouse`'s parameter shadows the function name inside it
