"""The declaration of every output table, read from `tables.yml` beside this module: the one place for each column.

`tables.yml` holds, per raw table, its columns (Postgres types; `optional` ones load as NULL when a producer does
not write them; `not_loaded` ones a stage writes but the warehouse does not keep), its key (upsert and primary
key) and where its rows come from (a Store folder or a reference-data loader); per gold mart, the raw table it
selects from, the columns it adds or drops, and its dbt tests; and one description per column name. From it come:
the raw DDL and the loader's column casts (here), the stage writers' check (`check_output`), and the dbt sources,
staging docs, gold model contracts and the dim_date spine (`etl/warehouse/dbt_files.py`, checked in; a test
keeps them current). A stage that writes an undeclared column, or lacks a declared one, fails naming both.

Every raw table also gets `loaded_at` (the load transaction's time), which the marts that keep it show.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import yaml

from etl import measures
from etl.errors import ValidationError

if TYPE_CHECKING:
    import pandas as pd

DECLARATION = Path(__file__).with_name("tables.yml")
RAW = "raw"
LOAD_STATE = f"{RAW}._load_state"
SOURCE_FILE = "source_file"  # column of every file-loaded raw table: the Store path its row was loaded from

# Postgres type -> the Arrow type a column is cast to before COPY (so bad values fail with the file named).
ARROW_TYPES: dict[str, pa.DataType] = {
    "text": pa.string(),
    "double precision": pa.float64(),
    "bigint": pa.int64(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "timestamptz": pa.timestamp("us", tz="UTC"),
}


@dataclass(frozen=True)
class Column:
    name: str
    pg_type: str
    required: bool = True  # False: an extra column that loads as NULL when a producer does not write it

    @property
    def arrow_type(self) -> pa.DataType:
        return ARROW_TYPES[self.pg_type]


@dataclass(frozen=True)
class RawTable:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    source_dir: str | None = None   # folder in the Store (hive partitions); None = reference data
    replace_all: bool = False       # reference data: each load replaces the whole table
    keep_removed: str | None = None  # reference data: rows gone from the files stay, this boolean column false
    source: str = ""                # the dbt source it belongs to (silver, reference, risk, factors, ops)
    description: str = ""           # its grain and origin
    not_loaded: dict[str, str] = field(default_factory=dict)  # written by the stage, not kept: column -> why
    calendar: tuple[str, ...] = ()  # its columns whose days the dim_date spine must cover
    source_config: dict = field(default_factory=dict)  # the dbt source's config (freshness)

    @property
    def qualified(self) -> str:
        return f"{RAW}.{self.name}"

    @property
    def by_name(self) -> dict[str, Column]:
        return {c.name: c for c in self.columns}

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def ddl(self) -> list[str]:
        """Idempotent statements: create the table, then add any column declared since it was created."""
        cols = ",\n  ".join(
            f"{c.name} {c.pg_type}{' not null' if c.name in self.key else ''}" for c in self.columns
        )
        stmts = [
            f"create table if not exists {self.qualified} (\n  {cols},\n"
            f"  loaded_at timestamptz not null default now(),\n  primary key ({', '.join(self.key)})\n)"
        ]
        stmts += [f"alter table {self.qualified} add column if not exists {c.name} {c.pg_type}" for c in self.columns]
        if self.source_dir is not None:
            # the Store file each row came from: a rewritten or deleted file takes its old rows with it
            stmts += [f"alter table {self.qualified} add column if not exists {SOURCE_FILE} text",
                      f"create index if not exists {self.name}_{SOURCE_FILE}_idx on {self.qualified} ({SOURCE_FILE})"]
        return stmts


PCT_REASON = "VaR/ES as a fraction of gross exposure (gold keeps the amounts)"


def _raw_table(name: str, spec: dict) -> RawTable:
    """A raw table from its spec; `measures: <scope>` adds every etl/measures.py column of the scope that the spec
    does not list, as optional (and for a portfolio's VaR/ES, the `_pct` share of gross exposure, not loaded)."""
    listed = {**spec["columns"], **spec.get("optional", {})}
    derived = measures.columns(spec["measures"]) if "measures" in spec else {}
    optional = {**spec.get("optional", {}), **{c: "double precision" for c in derived if c not in listed}}
    not_loaded = dict(spec.get("not_loaded", {}))
    if spec.get("measures") == "portfolio":
        not_loaded |= {f"{c}_pct": PCT_REASON for c in derived if c.startswith(("var_", "es_"))}
    columns = tuple(Column(n, t) for n, t in spec["columns"].items()) + tuple(
        Column(n, t, required=False) for n, t in optional.items())
    return RawTable(name, columns, key=tuple(spec["key"]), source_dir=spec.get("source_dir"),
                    replace_all=spec.get("replace_all", False), keep_removed=spec.get("keep_removed"),
                    source=spec["source"],
                    description=spec["description"], not_loaded=not_loaded,
                    calendar=tuple(spec.get("calendar", ())), source_config=dict(spec.get("source_config", {})))


DECLARED: dict = yaml.safe_load(DECLARATION.read_text())
# column name -> what it means (one per name): the measures' from their registry, refined by tables.yml
DESCRIPTIONS: dict[str, str] = {**measures.descriptions(), **DECLARED["descriptions"]}
GOLD: dict[str, dict] = DECLARED["gold"]                   # gold model -> its declaration (see tables.yml)
TABLES: tuple[RawTable, ...] = tuple(_raw_table(n, spec) for n, spec in DECLARED["raw"].items())
BY_NAME: dict[str, RawTable] = {t.name: t for t in TABLES}
STORE_ONLY: dict[str, str] = DECLARED["store_only"]        # outputs the warehouse does not load -> why


def check_output(table: str, columns: Iterable[str], partition: Iterable[str] = ()) -> None:
    """Fail unless a stage's output `table` has exactly the declared columns (`partition`: the columns its hive
    path carries, e.g. factor_membership's date): an undeclared column would never reach the warehouse, a missing
    one would load as NULL or fail the load. A `store_only` table is not checked."""
    spec = BY_NAME.get(table)
    if table in STORE_ONLY:
        return
    if spec is None:
        raise ValidationError(f"output table {table!r} is not declared in {DECLARATION}: declare it (columns, key, "
                              "source_dir) or stop writing it")
    written, carried = set(columns), set(partition)
    known = set(spec.column_names) | set(spec.not_loaded)
    if extra := [c for c in columns if c not in known]:
        raise ValidationError(f"output {table}: column(s) {extra} are not declared in {DECLARATION} (raw.{table}); "
                              "declare each (type, description) or stop writing it")
    if missing := [c.name for c in spec.columns if c.name not in written | carried]:
        raise ValidationError(f"output {table}: declared column(s) {missing} are not written (raw.{table} in "
                              f"{DECLARATION}); write them or remove them from the declaration")


def arrow_schema(table: str, columns: Iterable[str] | None = None) -> pa.Schema:
    """The Arrow schema of a declared table's loaded columns, in declaration order; or of `columns`, in that order
    (a stage's file may also carry not_loaded columns and partition columns: each is typed by its name's
    declaration in any table, see `COLUMN_TYPES`)."""
    if columns is None:
        return pa.schema([(c.name, c.arrow_type) for c in BY_NAME[table].columns])
    return pa.schema([(name, ARROW_TYPES[COLUMN_TYPES[name]]) for name in columns])


# column name -> its Postgres type: a name means one thing in every table (one description per name), so one type
COLUMN_TYPES: dict[str, str] = {c.name: c.pg_type for t in TABLES for c in t.columns}
COLUMN_TYPES.update(DECLARED["store_types"])
DATE_COLUMNS: frozenset[str] = frozenset(n for n, t in COLUMN_TYPES.items() if t == "date")


LOAD_STATE_DDL = f"""
create table if not exists {LOAD_STATE} (
  path text primary key,          -- a Store path relative to the data root, or 'reference:<table>'
  table_name text not null,
  fingerprint text not null,      -- size:mtime of a file, or a content hash of reference data
  row_count bigint not null,
  loaded_at timestamptz not null default now()
)"""


def raw_ddl() -> list[str]:
    """Every statement that creates the raw schema and its tables (idempotent)."""
    stmts = [f"create schema if not exists {RAW}", LOAD_STATE_DDL]
    for table in TABLES:
        stmts += table.ddl()
    return stmts


def to_arrow(df: pd.DataFrame) -> pa.Table:
    """An output frame as Arrow for the lake and the warehouse: dates (the columns declared `date`) as date32,
    timestamps as UTC microseconds, text as string (stable types for the warehouse). Naive timestamps become dates by the final cast (no Python date objects: the backtest has millions of rows)."""
    import pandas as pd  # here: readers of the declaration alone (DAG files, the CLI) do not load pandas

    df = df.copy(deep=False)                       # copy-on-write: the caller's frame is not changed
    for col in df.columns:
        if col in DATE_COLUMNS:
            day = pd.to_datetime(df[col])
            df[col] = day.dt.normalize() if day.dt.tz is None else day.dt.date
        elif isinstance(df[col].dtype, pd.DatetimeTZDtype):
            df[col] = df[col].dt.tz_convert("UTC").astype("datetime64[us, UTC]")
        elif df[col].dtype == object:
            df[col] = df[col].astype("str")
    table = pa.Table.from_pandas(df, preserve_index=False)
    fields = [pa.field(f.name, pa.date32()) if f.name in DATE_COLUMNS else f for f in table.schema]
    return table.cast(pa.schema(fields))
