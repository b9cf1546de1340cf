"""An independent reader of the lake's Delta tables: DuckDB's `delta` extension, loaded offline from the
`duckdb-ext-delta` wheel (requirements-dev.txt)."""

from __future__ import annotations

import glob
import os

import duckdb

EXTENSION = next(iter(glob.glob(os.path.join(os.path.dirname(duckdb.__file__), "..", "duckdb_ext", "extensions",
                                             f"v{duckdb.__version__}", "*", "delta.duckdb_extension"))), None)


def duckdb_rows(path: str, exclude: tuple[str, ...] = ("run_as_of_date",)) -> list[tuple]:
    """Every row of the Delta table at `path` (without the columns `exclude`), sorted, as DuckDB reads it."""
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    con.execute(f"LOAD '{EXTENSION}'")
    drop = f" exclude ({', '.join(exclude)})" if exclude else ""
    return con.execute(f"select *{drop} from delta_scan('{path}') order by all").fetchall()


def duckdb_frame(path: str, exclude: tuple[str, ...] = ("run_as_of_date",)):
    """The Delta table at `path` as a pandas frame, as DuckDB reads it (rows in DuckDB's order)."""
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    con.execute(f"LOAD '{EXTENSION}'")
    drop = f" exclude ({', '.join(exclude)})" if exclude else ""
    return con.execute(f"select *{drop} from delta_scan('{path}')").df()
