"""The dbt files generated from the declaration (`etl/warehouse/tables.yml`), checked in so dbt needs no Python.

- `models/staging/_sources.yml`: every raw table as a dbt source, with its columns' types and descriptions;
- `models/staging/_staging__models.yml`: one staging view per raw table (the views select the declared columns
  through the `staged` macro, so they list none here);
- `models/marts/_marts__models.yml`: every gold mart with an enforced contract: its columns (the raw table's,
  less `exclude`, plus its own), their types, descriptions and tests;
- `models/intermediate/int_observed_dates.sql`: the days of every raw column named in a `calendar` list (the
  input of the dim_date spine).

The risk columns' descriptions come from etl/measures.py (through `schema.DESCRIPTIONS`), and a `<kind:scope>` token
in a declared description or test argument becomes that scope's methods (`_derived`). `make dbt-files` (`python -m
etl.warehouse.dbt_files`) rewrites them; tests/etl/warehouse/test_loader.py fails while one is out of date.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from etl import measures
from etl.settings import PROJECT_ROOT
from etl.warehouse.schema import DECLARATION, DECLARED, DESCRIPTIONS, GOLD, TABLES, RawTable

MODELS = PROJECT_ROOT / "dbt_project" / "models"
HEADER = (f"# Generated from {DECLARATION.relative_to(PROJECT_ROOT)} by `python -m etl.warehouse.dbt_files`: "
          "edit the declaration, not this file.\n")
DBT_TYPES = {"timestamptz": "timestamp with time zone"}  # the names dbt's contract check compares
LOADED_AT = ("loaded_at", "timestamptz")


TOKEN = re.compile(r"<(methods|method_names|var_columns|var_limit_metrics):(\w+)>")
LISTS = {"methods": lambda scope: list(measures.method_names(scope)),           # a whole test argument: a list
         "var_columns": measures.var_columns,
         "var_limit_metrics": lambda scope: [measures.column("var", c, m.name) for m in measures.methods(scope)
                                             for c in m.confidences if c >= 0.99]}
TEXTS = {"methods": lambda scope: ", ".join(m.label for m in measures.methods(scope)),   # within a description
         "method_names": lambda scope: ", ".join(f"{m.name} ({m.label})" for m in measures.methods(scope))}


def _derived(value):
    """A declared description or test argument with each `<kind:scope>` token filled in from etl/measures.py:
    `methods` (the scope's method names as a list, or their labels in a text), `method_names` (names and
    labels), `var_columns` (every VaR column: a portfolio's var_limit_metric), `var_limit_metrics` (the VaR columns at
    99% or more that a firm limit may name)."""
    if isinstance(value, dict):
        return {k: _derived(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_derived(v) for v in value]
    if isinstance(value, str) and (whole := TOKEN.fullmatch(value)) and whole.group(1) in LISTS:
        return LISTS[whole.group(1)](whole.group(2))
    if isinstance(value, str):
        return TOKEN.sub(lambda m: TEXTS[m.group(1)](m.group(2)), value)
    return value


def staging_model(table: RawTable) -> str:
    return f"stg_{table.source}__{table.name}"


def _description(name: str, spec: dict | None = None) -> str:
    if spec and "description" in spec:
        return spec["description"]
    if name not in DESCRIPTIONS:
        raise KeyError(f"column {name!r} has no description: add it under `descriptions:` in {DECLARATION}")
    return DESCRIPTIONS[name]


def _column(name: str, pg_type: str, spec: dict | None = None) -> dict:
    col = {"name": name, "data_type": DBT_TYPES.get(pg_type, pg_type), "description": _description(name, spec)}
    if spec and spec.get("data_tests"):
        col["data_tests"] = spec["data_tests"]
    return col


def sources() -> dict:
    by_source: dict[str, list[dict]] = {}
    for t in TABLES:
        entry = {"name": t.name, "description": t.description,
                 **({"config": t.source_config} if t.source_config else {}),
                 "columns": [_column(c.name, c.pg_type) for c in t.columns] + [_column(*LOADED_AT)]}
        by_source.setdefault(t.source, []).append(entry)
    return {"version": 2, "sources": [
        {"name": name, "description": DECLARED["sources"][name], "schema": "raw", "tables": tables}
        for name, tables in by_source.items()]}


def staging_models() -> dict:
    return {"version": 2, "models": [
        {"name": staging_model(t), "description": f"{t.description.removesuffix('.')}. Staging view over "
         f"raw.{t.name}: its declared columns and loaded_at (etl/warehouse/tables.yml; the source lists them)."}
        for t in TABLES]}


def gold_columns(name: str) -> list[tuple[str, str, dict]]:
    """(column, Postgres type, its gold spec) of a mart in table order: the raw table's columns less `exclude`,
    the mart's own columns (those with a `type`), then loaded_at unless excluded."""
    spec = GOLD[name]
    own = spec.get("columns", {})
    cols: list[tuple[str, str, dict]] = []
    if "from" in spec:
        raw = next(t for t in TABLES if t.name == spec["from"])
        excluded = set(spec.get("exclude", []))
        cols += [(c.name, c.pg_type, own.get(c.name, {})) for c in raw.columns if c.name not in excluded]
    known = {c for c, _, _ in cols} | {LOADED_AT[0]}
    for col, col_spec in own.items():
        if col in known:
            continue
        if "type" not in col_spec:
            raise KeyError(f"gold.{name}.{col} in {DECLARATION}: not a column of raw.{spec.get('from')}: give it "
                           "a type (the mart computes it) or fix the name")
        cols.append((col, col_spec["type"], col_spec))
    if "from" in spec and LOADED_AT[0] not in spec.get("exclude", []):
        cols.append((*LOADED_AT, own.get(LOADED_AT[0], {})))  # last, as in every mart that keeps it
    return cols


def marts_models() -> dict:
    models = []
    for name, spec in GOLD.items():
        config: dict = {"contract": {"enforced": True}}
        model = {"name": name, "description": spec["description"], "config": config}
        if spec.get("data_tests"):
            model["data_tests"] = spec["data_tests"]
        model["columns"] = [_column(c, t, s) for c, t, s in gold_columns(name)]
        models.append(model)
    return {"version": 2, "models": models}


def observed_dates_sql() -> str:
    dated = [(t, col, t.by_name[col].pg_type) for t in TABLES for col in t.calendar]
    imports = ",\n\n".join(f"{t.name} as (\n\n    select * from {{{{ ref('{staging_model(t)}') }}}}\n\n)"
                           for t in TABLES if t.calendar)
    day = {"date": "{col}", "timestamptz": "cast({col} at time zone 'UTC' as date)"}
    union = "\n    union\n".join(f"    select {day[pg].format(col=col)} as observed_date from {t.name}"
                                for t, col, pg in dated)
    return (f"-- Generated from {DECLARATION.relative_to(PROJECT_ROOT)} (the `calendar` columns of each raw table) "
            "by `python -m etl.warehouse.dbt_files`.\n"
            "-- Every UTC day that appears in the market data or the risk outputs (input of the dim_date spine).\n"
            f"with {imports},\n\nunioned as (\n\n{union}\n\n),\n\nfinal as (\n\n    select observed_date\n"
            "    from unioned\n    where observed_date is not null\n\n)\n\nselect * from final\n")


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data):
        return True


def _yaml(doc: dict) -> str:
    return HEADER + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=118, allow_unicode=True)


def render() -> dict[Path, str]:
    """Every generated file and its content."""
    return {
        MODELS / "staging" / "_sources.yml": _yaml(_derived(sources())),
        MODELS / "staging" / "_staging__models.yml": _yaml(_derived(staging_models())),
        MODELS / "marts" / "_marts__models.yml": _yaml(_derived(marts_models())),
        MODELS / "intermediate" / "int_observed_dates.sql": observed_dates_sql(),
    }


def stale() -> list[Path]:
    """The generated files whose content differs from what the declaration gives now."""
    return [p for p, text in render().items() if not p.exists() or p.read_text() != text]


def write() -> list[Path]:
    changed = stale()
    for path, text in render().items():
        if path in changed:
            path.write_text(text)
    return changed

if __name__ == "__main__":
    for path in write():
        print(f"wrote {path.relative_to(PROJECT_ROOT)}")
