"""etl/reference.py: the instrument master and exchanges load whole or not at all, every rule names file, line
and rule; `validate_reference` (etl.reference_check) lists every problem of every file once and loads nothing. (Portfolio and position
rules: test_portfolios.py; the `reference validate` command: test_cli.py.)"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from etl.errors import ValidationError
from etl.reference import (
    DELISTED_ON,
    INSTRUMENT_COLUMNS,
    MAX_REPORTED,
    collecting,
    fail,
    load_exchanges,
    load_instruments,
    quote_currency,
    read_reference_csv,
)
from etl.reference_check import validate_reference
from etl.settings import get_settings


def _settings(folder: Path):
    return replace(get_settings(), reference_dir=folder)


def _append(path: Path, *rows: str) -> None:
    path.write_text(path.read_text() + "".join(f"{row}\n" for row in rows))


def test_the_shipped_files_load():
    instruments = load_instruments()
    assert list(instruments.columns) == [*INSTRUMENT_COLUMNS, DELISTED_ON] and instruments["product_id"].is_unique
    assert instruments[DELISTED_ON].isna().all()  # the optional column absent: every product listed
    assert instruments.set_index("product_id").loc["ETH-BTC", ["base_currency", "quote_currency"]].tolist() == \
        ["ETH", "BTC"]
    assert load_exchanges()["exchange_id"].tolist() == ["coinbase"]
    assert validate_reference() == []


def test_instrument_rules_name_file_line_and_rule(reference_copy):
    path = reference_copy / "instruments.csv"
    n = len(path.read_text().splitlines())
    _append(path, "FOO-USD,FOO,EUR,coinbase,crypto_major,Foo", "BAR-USD,BAR,USD,kraken,crypto_major,Bar",
            "BTC-USD,BTC,USD,coinbase,crypto_major,Bitcoin again")
    with pytest.raises(ValidationError) as err:
        load_instruments(_settings(reference_copy))
    assert str(err.value).splitlines() == [
        "3 invalid row(s) in instruments; nothing loaded. Fix the file:",
        f"{path}:{n + 1}: product_id 'FOO-USD' must be BASE-QUOTE (FOO-EUR)",
        f"{path}:{n + 2}: unknown exchange_id 'kraken' (known: ['coinbase'])",
        f"{path}:{n + 3}: duplicate product_id 'BTC-USD'",
    ]



def test_blank_lines_and_quoted_line_breaks_do_not_shift_the_line_named(reference_copy):
    """pandas skips blank lines and reads a quoted line break as part of a cell: the line named is still the
    file's line of the bad row (a row's position in the frame is not its line)."""
    path = reference_copy / "instruments.csv"
    n = len(path.read_text().splitlines())
    _append(path, "", "FOO-USD,FOO,USD,coinbase,crypto_major,\"Foo\nover two lines\"", "",
            "BAR-USD,BAR,USD,kraken,crypto_major,Bar")
    with pytest.raises(ValidationError) as err:
        load_instruments(_settings(reference_copy))
    assert f"{path}:{n + 5}: unknown exchange_id 'kraken'" in str(err.value).splitlines()[1]

def test_delisted_on_is_an_optional_day_and_a_bad_one_names_file_and_line(reference_copy):
    path = reference_copy / "instruments.csv"
    lines = path.read_text().splitlines()
    rows = [f"{lines[0]},{DELISTED_ON}"] + [f"{row}," for row in lines[1:]]
    rows[1] = rows[1][:-1] + ",2026-01-15"                                 # line 2: BTC-USD delisted
    rows[2] = rows[2][:-1] + ",15/01/2026"                                 # line 3: not a day
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(ValidationError) as err:
        load_instruments(_settings(reference_copy))
    assert str(err.value).splitlines()[1:] == [
        f"{path}:3: unparsable date: delisted_on='15/01/2026'; use YYYY-MM-DD (empty while listed)"]
    rows[2] = rows[2].rsplit(",", 1)[0] + ","
    path.write_text("\n".join(rows) + "\n")
    delisted = load_instruments(_settings(reference_copy)).set_index("product_id")[DELISTED_ON]
    assert delisted["BTC-USD"] == pd.Timestamp("2026-01-15") and delisted.drop("BTC-USD").isna().all()


def test_a_duplicate_exchange_is_refused(reference_copy):
    path = reference_copy / "exchanges.csv"
    _append(path, "coinbase,Coinbase again,https://example.com,UTC")
    with pytest.raises(ValidationError, match=rf"{path}:3: duplicate exchange_id 'coinbase'"):
        load_exchanges(_settings(reference_copy))


def test_unreadable_files_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(ValidationError, match=r"missing\.csv: reference file not found \(set PIPELINE_REFERENCE_DIR"):
        read_reference_csv(tmp_path / "missing.csv", ["a"])
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValidationError, match=r"empty\.csv:1: empty file: expected a header line"):
        read_reference_csv(tmp_path / "empty.csv", ["a"])
    (tmp_path / "latin1.csv").write_bytes("a,b\nJos\xe9,1\n".encode("latin-1"))
    with pytest.raises(ValidationError, match=r"latin1\.csv: not a readable UTF-8 CSV file"):
        read_reference_csv(tmp_path / "latin1.csv", ["a"])
    (tmp_path / "cols.csv").write_text("a,c\n1,2\n")
    with pytest.raises(ValidationError, match=r"cols\.csv:1: header: missing column\(s\) \['b'\]; expected at least "
                                              r"\['a', 'b'\]"):
        read_reference_csv(tmp_path / "cols.csv", ["a", "b"])
    (tmp_path / "commas.csv").write_text("a,b\n1,2\n3,4,5\n")
    with pytest.raises(ValidationError, match=r"commas\.csv:3: 3 fields, the header has 2 \(a,b\): an extra field"):
        read_reference_csv(tmp_path / "commas.csv", ["a"])


def test_cells_and_header_names_are_stripped_strings(tmp_path):
    (tmp_path / "x.csv").write_text(" product_id , quantity \n BTC-USD , 007 \n")
    df = read_reference_csv(tmp_path / "x.csv", ["product_id", "quantity"])
    assert df.to_dict("records") == [{"product_id": "BTC-USD", "quantity": "007"}]


def test_one_error_lists_the_first_problems_and_counts_the_rest():
    problems = [f"f.csv:{i}: bad" for i in range(2, MAX_REPORTED + 7)]
    with pytest.raises(ValidationError) as err:
        fail(problems, "things")
    lines = str(err.value).splitlines()
    assert lines[0] == f"{MAX_REPORTED + 5} invalid row(s) in things; nothing loaded. Fix the file:"
    assert lines[1:-1] == problems[:MAX_REPORTED] and lines[-1] == "... and 5 more"
    fail([], "things")  # nothing wrong: nothing raised


def test_collecting_records_problems_instead_of_raising():
    with collecting() as found:
        fail(["a.csv:2: bad"], "a")
        fail(["b.csv:3: worse"], "b")
    assert found == ["a.csv:2: bad", "b.csv:3: worse"]
    with pytest.raises(ValidationError):  # outside the block, raising again
        fail(["a.csv:2: bad"], "a")


def test_quote_currency_comes_from_the_instrument_master():
    assert quote_currency("ETH-BTC") == "BTC" and quote_currency("SOL-USD") == "USD"
    with pytest.raises(ValidationError, match="product 'DOGE-EUR' is not in the instrument master"):
        quote_currency("DOGE-EUR")


def test_validate_lists_every_problem_of_every_file_once(reference_copy):
    folder = reference_copy
    n_instruments = len((folder / "instruments.csv").read_text().splitlines())
    _append(folder / "instruments.csv", "BAR-USD,BAR,USD,kraken,crypto_major,Bar")
    _append(folder / "positions.csv", "P001,FOO-USD,2024-06-01,1,10")
    n_positions = len((folder / "positions.csv").read_text().splitlines())
    problems = validate_reference(folder)
    assert [p.split(": ", 1)[0] for p in problems] == [f"{folder}/instruments.csv:{n_instruments + 1}",
                                                       f"{folder}/positions.csv:{n_positions}"]
    assert problems[0].endswith("unknown exchange_id 'kraken' (known: ['coinbase'])")
    assert "unknown product" in problems[1]
    assert validate_reference(get_settings().reference_dir) == []  # the shipped folder, untouched


def test_validate_reports_a_missing_file_once(reference_copy):
    (reference_copy / "exchanges.csv").unlink()
    problems = validate_reference(reference_copy)
    assert problems[0] == (f"{reference_copy}/exchanges.csv: reference file not found "
                           "(set PIPELINE_REFERENCE_DIR to its folder)")
    assert len(problems) == 1  # every other loader needs the exchanges: the same problem, listed once


def test_validate_checks_the_settings_that_name_reference_data(reference_copy, monkeypatch):
    """PIPELINE_PRODUCTS against the instrument master, the RISK_STRESS_SCENARIOS file as the risk run loads it:
    each problem names the setting (and the file:line)."""
    monkeypatch.setenv("PIPELINE_PRODUCTS", "BTC-USD,FOO-USD,BAR-EUR")
    scenarios = reference_copy / "stress.csv"
    scenarios.write_text("scenario_id,scenario_type,start_date,end_date,product_id,shock,description\n"
                         "crash,hypothetical,,,BTC-USD,-0.3,BTC -30%\n"
                         "typo,hypothetical,,,ETH-USD,minus half,ETH -50%\n")
    monkeypatch.setenv("RISK_STRESS_SCENARIOS", str(scenarios))
    assert validate_reference(reference_copy) == [
        f"setting PIPELINE_PRODUCTS: FOO-USD, BAR-EUR not in the instrument master ({reference_copy}/instruments.csv):"
        " add them there, or unset PIPELINE_PRODUCTS to ingest what the book holds",
        f"setting RISK_STRESS_SCENARIOS: {scenarios}:3: shock 'minus half' is not a number (a fraction, -0.3 = -30%)"]
    scenarios.write_text("scenario_id,scenario_type,start_date,end_date,product_id,shock,description\n"
                         "typo,hypothetical,,,ETH-USDT,-0.5,ETH -50%\n")
    assert validate_reference(reference_copy)[-1] == (
        f"setting RISK_STRESS_SCENARIOS: {scenarios}:2: hypothetical scenario 'typo': product_id 'ETH-USDT' is not "
        "in the instrument master (instruments.csv): fix the name or add the product")
    monkeypatch.setenv("PIPELINE_PRODUCTS", "")  # unset: the book's products, in the master by the positions' rule
    monkeypatch.delenv("RISK_STRESS_SCENARIOS")
    assert validate_reference(reference_copy) == []


def test_firm_limits_name_file_line_and_rule_and_are_optional(reference_copy):
    from etl.reference import load_firm_limits

    shipped = load_firm_limits()
    assert shipped.to_dict("records") == [{"limit_id": "firm_var_99", "metric": "var_99_hist",
                                           "limit_value": 1_000_000.0, "currency": "USD"}]
    path = reference_copy / "firm_limits.csv"
    _append(path, "firm_var_99,var_99_hist,5,USD", "es_cap,es_99_hist,-1,EUR")
    problems = validate_reference(reference_copy)
    assert problems == [f"{path}:3: limit_id 'firm_var_99' must be present and unique",
                        f"{path}:4: metric 'es_99_hist' is not a firm VaR 99% column (one of ['var_99_fhs_ewma', "
                        "'var_99_garch_t', 'var_99_hist', 'var_99_mc', 'var_99_param'])",
                        f"{path}:4: limit_value '-1' must be a positive number (USD)",
                        f"{path}:4: currency 'EUR': firm figures are in USD"]
    with pytest.raises(ValidationError, match=r"4 invalid row\(s\) in firm limits"):
        load_firm_limits(_settings(reference_copy))
    path.unlink()  # no file: no firm limit, not an error
    assert load_firm_limits(_settings(reference_copy)).empty and validate_reference(reference_copy) == []
