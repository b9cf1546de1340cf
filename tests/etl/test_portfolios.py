"""Portfolios and positions: the sample book loads, and every validation rule names file, line and rule."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from etl.errors import ValidationError
from etl.portfolios import load_portfolios, load_positions
from etl.settings import PROJECT_ROOT, get_settings

SAMPLE = PROJECT_ROOT / "etl" / "reference_data"


@pytest.fixture
def ref_dir(tmp_path) -> Path:
    for name in ("instruments.csv", "exchanges.csv", "portfolios.csv", "positions.csv"):
        shutil.copy(SAMPLE / name, tmp_path / name)
    return tmp_path


def _settings(ref_dir: Path):
    return replace(get_settings(), reference_dir=ref_dir)


def test_sample_book_has_the_shapes_the_risk_issue_asks_for():
    portfolios = load_portfolios()
    positions = load_positions()
    assert len(portfolios) >= 20
    assert portfolios["portfolio_id"].is_unique
    assert set(portfolios["base_currency"]) == {"USD", "BTC"}
    assert list(portfolios.columns[:6]) == ["portfolio_id", "name", "base_currency", "var_limit",
                                            "concentration_limit", "drawdown_limit"]
    assert (positions["quantity"] < 0).any(), "some hedged (short) positions"
    assert "ETH-BTC" in set(positions["product_id"])
    assert len(set(positions["product_id"])) == 13
    assert set(positions["as_of_date"].dt.strftime("%Y-%m-%d")) == {"2024-06-01", "2025-06-01"}
    assert positions["as_of_date"].dtype == "datetime64[ns]"
    assert set(positions["portfolio_id"]) == set(portfolios["portfolio_id"])


def _expect_error(ref_dir: Path, file: str, line: int, row: str, rule: str, loader=load_positions):
    path = ref_dir / file
    lines = path.read_text().splitlines()
    lines.insert(line - 1, row)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValidationError) as err:
        loader(_settings(ref_dir))
    assert f"{path}:{line}: {rule}" in str(err.value)
    assert "nothing loaded" in str(err.value)


@pytest.mark.parametrize("row, rule", [
    ("P001,FOO-USD,2024-06-01,1,10", "unknown product"),
    ("P001,SOL-USD,2024-06-01,0,10", "quantity = 0"),
    ("P001,SOL-USD,2024-06-01,5,0", "avg_cost <= 0"),
    ("P001,SOL-USD,2024-06-01,5,-3", "avg_cost <= 0"),
    ("P001,BTC-USD,2024-06-01,5,100", "duplicate key"),
    ("P001,SOL-USD,2024-13-01,5,100", "unparsable date"),
    ("P001,SOL-USD,01/06/2024,5,100", "unparsable date"),
    ("P999,SOL-USD,2024-06-01,5,100", "unknown portfolio"),
    ("P001,SOL-USD,2024-06-01,five,100", "non-numeric"),
])
def test_position_rules(ref_dir, row, rule):
    # line 3 comes after P001's BTC-USD 2024-06-01 row (line 2), so the duplicate is the later line
    _expect_error(ref_dir, "positions.csv", 3, row, rule)


def test_every_problem_is_listed_with_its_line(ref_dir):
    path = ref_dir / "positions.csv"
    path.write_text(path.read_text() + "P001,FOO-USD,2024-06-01,1,10\nP002,SOL-USD,2024-06-01,0,10\n")
    n = len(path.read_text().splitlines())
    with pytest.raises(ValidationError) as err:
        load_positions(_settings(ref_dir))
    msg = str(err.value)
    assert msg.startswith("2 invalid row(s) in positions")
    assert f"{path}:{n - 1}: unknown product: 'FOO-USD'" in msg
    assert f"{path}:{n}: quantity = 0" in msg


@pytest.mark.parametrize("row, rule", [
    ("P001,Again,USD,1000,0.5,0.5,", "duplicate portfolio_id"),
    ("P100,Yen book,JPY,1000,0.5,0.5,", "unknown base_currency"),
    ("P100,Bad limit,USD,abc,0.5,0.5,", "non-numeric"),
    ("P100,Bad limit,USD,-5,0.5,0.5,", "var_limit <= 0"),
    ("P100,Bad limit,USD,1000,1.5,0.5,", "concentration_limit outside (0, 1]"),
    ("P100,Bad metric,USD,1000,0.5,0.5,var_97_hist", "unknown var_limit_metric"),
    ("P100,USD metric,USD,1000,0.5,0.5,var_99_hist_usd", "unknown var_limit_metric"),  # a ranking figure, in USD
])
def test_portfolio_rules(ref_dir, row, rule):
    lines = (ref_dir / "portfolios.csv").read_text().splitlines()
    _expect_error(ref_dir, "portfolios.csv", len(lines) + 1, row, rule, loader=load_portfolios)


def test_missing_column_and_missing_file(ref_dir):
    path = ref_dir / "positions.csv"
    df = pd.read_csv(path).drop(columns=["avg_cost"])
    df.to_csv(path, index=False)
    with pytest.raises(ValidationError, match=r"positions.csv:1: header: missing column\(s\) \['avg_cost'\]"):
        load_positions(_settings(ref_dir))
    path.unlink()
    with pytest.raises(ValidationError, match="reference file not found"):
        load_positions(_settings(ref_dir))


@pytest.mark.parametrize(("row", "what"), [("P001,BTC-USD,2026-01-01,1,50000,extra", "6 fields, the header has 5"),
                                           ("P001,BTC-USD,2026-01-01", "3 fields, the header has 5")])
def test_reference_csv_with_an_extra_or_missing_field_names_file_and_line(ref_dir, row, what):
    lines = (ref_dir / "positions.csv").read_text().splitlines()
    lines.insert(2, row)                                                   # becomes line 3
    (ref_dir / "positions.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValidationError, match=rf"positions\.csv:3: {what}"):
        load_positions(_settings(ref_dir))


@pytest.mark.parametrize("metric", ["var_99_fhs_ewma", "var_95_garch_t", "var_99_mc", "var_99_param_t", "var_995_evt_gpd"])
def test_a_var_limit_may_name_any_var_method_the_engine_computes(ref_dir, metric):
    path = ref_dir / "portfolios.csv"
    path.write_text(path.read_text().rstrip("\n") + f"\nP100,Filtered book,USD,1000,0.5,0.5,{metric}\n")
    portfolios = load_portfolios(_settings(ref_dir))
    assert portfolios.set_index("portfolio_id").at["P100", "var_limit_metric"] == metric


def _delist(ref_dir: Path, product: str, day: str) -> None:
    """Add the optional delisted_on column to instruments.csv, `product` delisted on `day`."""
    path = ref_dir / "instruments.csv"
    lines = path.read_text().splitlines()
    rows = [f"{lines[0]},delisted_on"] + [f"{r},{day if r.startswith(product + ',') else ''}" for r in lines[1:]]
    path.write_text("\n".join(rows) + "\n")


def test_a_position_that_outlives_its_instrument_is_refused_with_file_and_line(ref_dir):
    """Delisted on 2025-01-01: the 2024-06-01 snapshots (held before) stay valid (carried forward, valued at the
    last close); a snapshot dated after the delisting still holding it is refused."""
    _delist(ref_dir, "LINK-USD", "2025-01-01")
    assert "LINK-USD" in set(load_positions(_settings(ref_dir))["product_id"])
    path = ref_dir / "positions.csv"
    path.write_text(path.read_text() + "P002,LINK-USD,2025-01-01,6250,13.6\nP005,LINK-USD,2025-01-02,100,13.6\n")
    line = len(path.read_text().splitlines())
    with pytest.raises(ValidationError) as err:
        load_positions(_settings(ref_dir))
    problems = str(err.value).splitlines()[1:]
    assert problems == [f"{path}:{line}: position outlives its instrument: LINK-USD was delisted on 2025-01-01 "
                        "(instruments.csv) but this snapshot of 2025-01-02 still holds it: drop the row or correct "
                        "delisted_on"]


def test_an_empty_limit_is_no_limit(ref_dir):
    """A portfolio without a limit of some kind is valid: the empty cell loads as NaN and nothing breaches it
    (a NaN metric against no limit is no breach either); a non-empty non-number is still an error."""
    from etl.risk.engine import limit_breaches

    path = ref_dir / "portfolios.csv"
    path.write_text(path.read_text() + "P100,No VaR limit,USD,,0.5,,\nP101,Only VaR,USD,100,,,\n")
    got = load_portfolios(_settings(ref_dir)).set_index("portfolio_id")
    assert np.isnan(got.loc["P100", "var_limit"]) and np.isnan(got.loc["P100", "drawdown_limit"])
    assert got.loc["P100", "concentration_limit"] == 0.5 and got.loc["P101", "var_limit"] == 100.0
    risk = pd.DataFrame({"portfolio_id": ["P100", "P101"], "as_of_date": [pd.Timestamp("2026-01-31")] * 2,
                         "base_currency": ["USD"] * 2, "var_99_hist": [1e9, np.nan],
                         "concentration_pct": [0.9, np.nan], "drawdown_from_peak": [-0.99, -0.99],
                         "gross_exposure": [1.0, 1.0]})
    out = limit_breaches(risk, got.reset_index())
    assert sorted(zip(out["portfolio_id"], out["limit_type"], out["breach_kind"], strict=True)) == [
        ("P100", "concentration", "exceeded"), ("P101", "var", "uncomputable")]
    path.write_text(path.read_text() + "P102,Typo,USD,1e5,half,,\n")
    n = len(path.read_text().splitlines())
    with pytest.raises(ValidationError, match=rf"portfolios.csv:{n}: non-numeric: concentration_limit='half' is not "
                                              r"a finite number \(leave it empty for no such limit\)"):
        load_portfolios(_settings(ref_dir))


def test_a_position_whose_quote_currency_cannot_be_converted_is_refused_with_file_and_line(ref_dir):
    """ETH-EUR is in the instrument master but no EUR-USD is: its value cannot reach any base currency (the same
    rule as a portfolio's base_currency), so the row is refused here, not later by risk without a file or line."""
    with (ref_dir / "instruments.csv").open("a") as f:
        f.write("ETH-EUR,ETH,EUR,coinbase,crypto_major,Ether / Euro\n")
    _expect_error(ref_dir, "positions.csv", 3, "P001,ETH-EUR,2024-06-01,5,2000", "unconvertible quote_currency")


def test_a_blank_line_does_not_shift_the_line_numbers(ref_dir):
    """pandas skips blank lines: the line named must still be the file's line of the bad row."""
    path = ref_dir / "positions.csv"
    lines = path.read_text().splitlines()
    lines[2:2] = ["", "P001,FOO-USD,2024-06-01,1,10"]                      # a blank line 3, the bad row on line 4
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValidationError) as err:
        load_positions(_settings(ref_dir))
    assert f"{path}:4: unknown product: 'FOO-USD'" in str(err.value)
