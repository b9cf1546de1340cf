"""etl/measures.py is the one list of methods, confidences, measures and limit types: the warehouse declaration,
the generated dbt YAML, the report and the cockpit derive from it (a method added there appears on both pages)."""

from __future__ import annotations

import sys

import pandas as pd
import pytest
import yaml

from etl import measures
from etl.report import html
from etl.settings import PROJECT_ROOT
from etl.warehouse import dbt_files, schema

sys.path.insert(0, str(PROJECT_ROOT / "plugins"))
from risk_cockpit import pages  # noqa: E402  (the plugins folder, as Airflow loads it)


def test_column_names_follow_the_contract_pattern():
    assert measures.column("var", 0.99, "hist") == "var_99_hist"
    assert measures.column("es", 0.995, "evt_gpd") == "es_995_evt_gpd"
    assert measures.column("component_var", 0.95, "param") == "component_var_95_param"
    assert measures.column("var", 0.99, "hist", "intraday") == "var_99"           # fact_intraday_risk's names
    assert measures.column("es", 0.95, "mc", "intraday") == "es_95_mc"
    assert measures.method_names("portfolio") == ("hist", "param", "mc", "fhs_ewma", "garch_t", "param_cf",
                                                  "param_t", "evt_gpd")
    assert measures.method_names("firm") == ("hist", "param", "mc", "fhs_ewma", "garch_t")
    assert measures.method_names("intraday") == ("hist", "param", "mc")
    assert len({m.name for m in measures.METHODS}) == len(measures.METHODS)


@pytest.mark.parametrize("table, scope", [("risk_metrics", "portfolio"), ("firm_risk", "firm"),
                                          ("intraday_risk", "intraday"), ("asset_risk", "asset")])
def test_each_raw_table_declares_every_registered_column_of_its_scope(table, scope):
    declared = schema.BY_NAME[table]
    for col in measures.columns(scope):
        assert declared.by_name[col].pg_type == "double precision", (table, col)
    if scope == "portfolio":                              # the engine's VaR/ES share of gross: written, not loaded
        assert {f"{c}_pct" for c in measures.columns(scope) if c.startswith(("var_", "es_"))} <= set(
            declared.not_loaded)


def test_the_generated_dbt_yaml_describes_the_risk_columns_and_lists_the_methods_from_the_registry():
    marts = {m["name"]: m for m in yaml.safe_load(dbt_files.render()[dbt_files.MODELS / "marts" /
                                                                      "_marts__models.yml"])["models"]}
    risk = marts["fact_risk_metrics"]
    described = {c["name"]: c["description"] for c in risk["columns"]}
    assert described["var_99_param_t"] == ("99% value at risk, parametric Student-t (scale and degrees of freedom "
                                           "by maximum likelihood): a positive 1-day loss amount in base currency.")
    assert described["es_995_evt_gpd"].startswith("99.5% expected shortfall, peaks over the 90% threshold")
    assert all(m.label in risk["description"] for m in measures.methods("portfolio"))
    ordering = {name: next(t["var_es_ordering"]["arguments"]["methods"] for t in marts[name]["data_tests"]
                           if "var_es_ordering" in t) for name in ("fact_risk_metrics", "fact_firm_risk")}
    assert ordering == {"fact_risk_metrics": list(measures.method_names("portfolio")),
                        "fact_firm_risk": list(measures.method_names("firm"))}
    firm = {c["name"]: c["description"] for c in marts["fact_firm_risk"]["columns"]}
    assert firm["sum_standalone_var_95_garch_t"] == ("Sum over portfolios of their standalone VaR 95% (GARCH(1,1) "
                                                     "with Student-t innovations), each measured in USD.")


def test_a_method_added_to_the_registry_appears_on_the_report_and_the_cockpit(monkeypatch):
    semi = measures.Method("semi", "Semi-variance test", "a test method", "none", scopes=("portfolio", "firm"))
    monkeypatch.setattr(measures, "METHODS", (*measures.METHODS, semi))
    row = {"var_95_hist": 10.0, "var_99_hist": 20.0, "es_95_hist": 15.0, "es_99_hist": 25.0,
           "var_95_semi": 1234.5, "var_99_semi": 2345.5, "es_95_semi": 3456.5, "es_99_semi": 4567.5}
    shown = {"report": html._methods_table(pd.Series(row), "portfolio", "USD", "t"),
             "cockpit portfolio": pages.methods_table(row, "portfolio", "t"),
             "cockpit firm": pages.methods_table(row, "firm", "t")}
    for page in shown.values():
        assert "Semi-variance test" in page and "4,567.50" in page and "Historical" in page
        assert "Parametric" not in page                                   # a method without figures: no row
    assert "VaR 99.5%" in shown["cockpit portfolio"]                     # EVT's level (the report drops empty columns)
    assert "VaR 99.5%" not in shown["cockpit firm"]                       # no firm method computes it


def test_every_limit_type_is_registered_with_its_unit():
    assert measures.LIMIT_TYPES == ("var", "concentration", "drawdown", "lvar")
    assert measures.FRACTION_LIMITS == {"concentration", "drawdown"}
    assert html.limit_value("lvar", 1234.5) == "1,234.50"
    assert html.limit_value("concentration", 0.25) == "25.0%"


def test_every_registered_method_and_measure_has_its_convention_in_the_docs():
    text = (PROJECT_ROOT / "docs" / "risk_conventions.md").read_text()
    named = {m.name: (f"`{m.name}`", f"_{m.name}`") for m in measures.METHODS}        # `param_t`, `*_fhs_ewma`
    named |= {m.name: (f"`{m.name}_",) if m.per_method else (f"`{m.name}`",) for m in measures.MEASURES}
    missing = [name for name, forms in named.items() if not any(f in text for f in forms)]
    assert missing == [], "add a convention line to docs/risk_conventions.md for each"


def test_an_annualised_measure_is_described_with_the_setting_it_is_annualised_with():
    """The engine annualises with RISK_ANNUALIZATION_DAYS (risk_returns, x sqrt(periods)); gold's column descriptions
    said 'sqrt(365) scaling', wrong for a desk running 252 whose vol_20d is x sqrt(252)."""
    from etl import measures

    annualised = [m for m in measures.MEASURES if m.unit == "annualised fraction"]
    assert annualised
    for m in annualised:
        assert "365)" not in m.description and "RISK_ANNUALIZATION_DAYS" in m.description, m.name
