"""Stress tests (etl.risk.stress): scenario PnL against hand revaluation, and the scenario file's errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from etl.errors import ValidationError
from etl.risk import stress
from etl.risk.engine import RiskParams, compute_tables
from etl.settings import PROJECT_ROOT
from tests.etl.risk.test_contributions import BOOK, PORTFOLIOS, QUOTE, _closes

HEADER = "scenario_id,scenario_type,start_date,end_date,product_id,shock,description\n"
FILE = HEADER + (
    "crash_week,historical,2026-02-02,2026-02-08,,,a week in the data\n"
    "before_data,historical,2020-01-01,2020-01-07,,,not in the data: skipped\n"
    "btc_down,hypothetical,,,BTC-USD,-0.30,BTC -30%\n"
    "eth_only,hypothetical,,,ETH-USD,-0.40,ETH -40% alone\n"
)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    path = tmp_path_factory.mktemp("stress") / "scenarios.csv"
    path.write_text(FILE)
    params = RiskParams(var_lookback_days=60, backtest_days=20, mc_scenarios=500, es_simulations=20,
                        es_bootstrap=20, stress_file=str(path))
    closes = _closes()
    return closes, compute_tables(closes, QUOTE, PORTFOLIOS, BOOK, params)["stress_results"]


HOLDINGS = {pid: list(zip(g["product_id"], g["quantity"], strict=True)) for pid, g in BOOK.groupby("portfolio_id")}
BASE = dict(zip(PORTFOLIOS["portfolio_id"], PORTFOLIOS["base_currency"], strict=True))


def _book_value(closes: pd.DataFrame, portfolio: str, prices: dict[str, float]) -> float:
    """Value of a portfolio's positions at the given USD prices, in its base currency (hand revaluation)."""
    usd = sum(q * prices[p] for p, q in HOLDINGS[portfolio])
    return usd / (1.0 if BASE[portfolio] == "USD" else prices["BTC-USD"])


def _usd_prices(closes: pd.DataFrame, day) -> dict[str, float]:
    row = closes.loc[day]
    return {"BTC-USD": row["BTC-USD"], "ETH-USD": row["ETH-USD"], "ETH-BTC": row["ETH-BTC"] * row["BTC-USD"]}


def test_historical_windows_equal_hand_revaluation(result):
    closes, res = result
    usd = {d: _usd_prices(closes, d) for d in closes.index}
    today = usd[closes.index[-1]]
    s = res.set_index(["portfolio_id", "scenario_id"])
    for pid in PORTFOLIOS["portfolio_id"]:
        value = _book_value(closes, pid, today)

        def shocked(first, last, pid=pid, value=value):
            """Today's book revalued with every USD price (BTC's too) moved as over [first - 1 day, last]."""
            a, b = usd[first - pd.Timedelta(days=1)], usd[last]
            return _book_value(closes, pid, {p: today[p] * b[p] / a[p] for p in today}) - value

        week = s.loc[(pid, "crash_week")]
        assert week["pnl"] == pytest.approx(shocked(pd.Timestamp("2026-02-02"), pd.Timestamp("2026-02-08")),
                                            rel=1e-9)
        worst = min(shocked(d, d) for d in closes.index[1:])
        assert s.loc[(pid, "worst_1d"), "pnl"] == pytest.approx(worst, rel=1e-9)
        worst5 = min(shocked(d - pd.Timedelta(days=4), d) for d in closes.index[5:])
        assert s.loc[(pid, "worst_5d"), "pnl"] == pytest.approx(worst5, rel=1e-9)
        w = s.loc[(pid, "worst_5d")]
        assert (w["window_end"] - w["window_start"]).days == 4
    assert "before_data" not in set(res["scenario_id"])
    assert set(res["scope"]) == {"portfolio", "firm"} and (res.loc[res.scope == "firm", "portfolio_id"] == "FIRM").all()


def test_hypothetical_shocks_propagate_through_betas_to_btc(result):
    closes, res = result
    today = _usd_prices(closes, closes.index[-1])
    usd = pd.DataFrame([_usd_prices(closes, d) for d in closes.index], index=closes.index).pct_change().iloc[-60:]
    beta = {p: np.polyfit(usd["BTC-USD"], usd[p], 1)[0] for p in usd}
    assert beta["BTC-USD"] == pytest.approx(1.0)
    s = res.set_index(["portfolio_id", "scenario_id"])
    for pid in PORTFOLIOS["portfolio_id"]:
        value = _book_value(closes, pid, today)
        moved = {p: today[p] * (1 - 0.30 * beta[p]) for p in today}
        assert s.loc[(pid, "btc_down"), "pnl"] == pytest.approx(_book_value(closes, pid, moved) - value, rel=1e-9)
        only_eth = {**today, "ETH-USD": today["ETH-USD"] * 0.6}    # no BTC shock: nothing else moves
        assert s.loc[(pid, "eth_only"), "pnl"] == pytest.approx(_book_value(closes, pid, only_eth) - value,
                                                                rel=1e-9)
        gross = sum(abs(q * today[p]) for p, q in zip(BOOK.loc[BOOK.portfolio_id == pid, "product_id"],
                                                      BOOK.loc[BOOK.portfolio_id == pid, "quantity"], strict=True))
        base = PORTFOLIOS.set_index("portfolio_id").at[pid, "base_currency"]
        gross /= 1.0 if base == "USD" else today["BTC-USD"]
        assert s.loc[(pid, "btc_down"), "pnl_pct"] == pytest.approx(s.loc[(pid, "btc_down"), "pnl"] / gross, rel=1e-9)
    firm = s.loc[("FIRM", "btc_down"), "pnl"]
    moved_usd = sum(q * today[p] * (-0.30 * beta[p]) for p, q in zip(BOOK["product_id"], BOOK["quantity"], strict=True))
    assert firm == pytest.approx(moved_usd, rel=1e-9)


@pytest.mark.parametrize(("line", "message"), [
    ("x,historical,2026-01-05,2026-01-01,,,", r":2: historical scenario 'x' needs start_date <= end_date"),
    ("x,historical,yesterday,2026-01-01,,,", r":2: start_date 'yesterday'"),
    ("x,hypothetical,,,BTC-USD,-30%,", r":2: shock '-30%' is not a number"),
    ("x,hypothetical,,,BTC-USD,-1.5,", r":2: shock '-1.5' must be a finite fraction > -1"),
    ("x,hypothetical,,,,-0.1,", r":2: hypothetical scenario 'x': product_id is empty"),
    ("x,crash,,,,,", r":2: scenario_type 'crash'"),
    ("worst_1d,hypothetical,,,BTC-USD,-0.1,", r":2: scenario_id 'worst_1d'"),
])
def test_a_bad_scenario_row_names_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + line + "\n")
    with pytest.raises(ValidationError, match=str(path).replace(".", r"\.") + message.replace("(", r"\(")):
        stress.load_scenarios(path)


def test_a_duplicate_shock_or_a_missing_column_is_an_error_and_the_shipped_file_loads(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text(HEADER + "x,hypothetical,,,BTC-USD,-0.1,\nx,hypothetical,,,BTC-USD,-0.2,\n")
    with pytest.raises(ValidationError, match=r"dup\.csv:3: scenario 'x' shocks BTC-USD twice"):
        stress.load_scenarios(path)
    path.write_text("scenario_id,shock\nx,0.1\n")
    with pytest.raises(ValidationError, match=r"dup\.csv:1: header: missing column"):
        stress.load_scenarios(path)
    shipped = stress.load_scenarios(PROJECT_ROOT / "etl" / "reference_data" / "stress_scenarios.csv")
    assert len(shipped.named) >= 1 and "btc_minus_30" in set(shipped.shocks["scenario_id"])


def test_a_btc_shock_on_a_book_whose_run_has_no_btc_prices_is_skipped_not_a_zero_loss(tmp_path, caplog):
    """An ETH-only USD book needs no BTC-USD close, so the run has none and no beta to BTC: 'BTC -30%, the rest
    through their beta' cannot be computed for it. It was a PnL of 0 (beta taken as 0); it is left out, logged."""
    path = tmp_path / "scenarios.csv"
    path.write_text(FILE)
    params = RiskParams(var_lookback_days=60, backtest_days=20, mc_scenarios=500, es_simulations=20,
                        es_bootstrap=20, stress_file=str(path))
    closes = _closes()[["ETH-USD"]]
    book = pd.DataFrame({"portfolio_id": ["E1"], "product_id": ["ETH-USD"], "as_of_date": [closes.index[0]],
                         "quantity": [10.0], "avg_cost": [3000.0]})
    portfolios = PORTFOLIOS.iloc[:1].assign(portfolio_id="E1")
    with caplog.at_level("WARNING", logger="etl.risk.stress"):
        res = compute_tables(closes, QUOTE, portfolios, book, params)["stress_results"]
    s = res.set_index(["portfolio_id", "scenario_id"])
    assert ("E1", "btc_down") not in s.index and ("FIRM", "btc_down") not in s.index
    eth = 10.0 * closes["ETH-USD"].iloc[-1]
    assert s.loc[("E1", "eth_only"), "pnl"] == pytest.approx(-0.40 * eth, rel=1e-12)
    assert s.loc[("FIRM", "eth_only"), "pnl"] == pytest.approx(-0.40 * eth, rel=1e-12)
    assert "btc_down" in caplog.text and "ETH-USD" in caplog.text and "BTC-USD" in caplog.text


def test_a_shock_on_a_product_not_in_the_instrument_master_is_refused_naming_the_line(tmp_path):
    """A typo ('ETH-USDT') moved nothing: the scenario's PnL was that of the other shocks alone (here 0), a
    figure over a misconfigured scenario. A product the book does not hold but the master knows is fine."""
    path = tmp_path / "scenarios.csv"
    path.write_text(HEADER + "btc_down,hypothetical,,,BTC-USD,-0.30,\neth_typo,hypothetical,,,ETH-USDT,-0.40,\n")
    params = RiskParams(var_lookback_days=60, backtest_days=20, mc_scenarios=500, es_simulations=20,
                        es_bootstrap=20, stress_file=str(path))
    with pytest.raises(ValidationError, match=str(path).replace(".", r"\.") +
                       r":3: hypothetical scenario 'eth_typo': product_id 'ETH-USDT' is not in the instrument master"):
        compute_tables(_closes(), QUOTE, PORTFOLIOS, BOOK, params)
    assert set(stress.load_scenarios(path, known={"BTC-USD", "ETH-USDT"}).shocks["product_id"]) == {"BTC-USD",
                                                                                                   "ETH-USDT"}
    # the shipped file names the shipped universe: an own master without SOL-USD or DOGE-USD still runs it
    assert {"SOL-USD", "DOGE-USD"} <= set(stress.load_scenarios(stress.SHIPPED, known={"BTC-USD"}).shocks["product_id"])


def test_a_book_holding_nothing_has_no_worst_window_not_the_first_window_of_the_history():
    """Every window of an empty book loses 0, so it has no worst window. Its worst_1d / worst_5d rows named the
    first window of the price history (argmin of a column of zeros) as the book's worst, dated like a real one; now
    they keep PnL 0 and leave the window empty (NULL). A book holding something keeps its window, as does the firm."""
    params = RiskParams(var_lookback_days=60, backtest_days=20, mc_scenarios=500, es_simulations=20, es_bootstrap=20)
    portfolios = pd.concat([PORTFOLIOS, PORTFOLIOS.iloc[:1].assign(portfolio_id="EMPTY")], ignore_index=True)
    res = compute_tables(_closes(), QUOTE, portfolios, BOOK, params)["stress_results"]
    s = res.set_index(["portfolio_id", "scenario_id"])
    for k in ("worst_1d", "worst_5d"):
        row = s.loc[("EMPTY", k)]
        assert row["pnl"] == 0.0 and np.isnan(row["pnl_pct"])
        assert pd.isna(row["window_start"]) and pd.isna(row["window_end"])
        held = s.loc[("U1", k)]
        assert held["pnl"] < 0 and (held["window_end"] - held["window_start"]).days == int(k[6]) - 1
        assert pd.notna(s.loc[("FIRM", k), "window_start"])


@pytest.mark.parametrize(("start", "end"), [
    ("02/03/2026", "02/08/2026"),                   # day/month or month/day? it was taken as 3 Feb, silently
    ("2026-02-02 12:00", "2026-02-08"),             # a time of day: the PnL from the 2 Feb close, labelled noon
    ("2026-02-02T00:00:00Z", "2026-02-08T00:00:00Z"),   # a UTC timestamp: a raw TypeError in the run, no file
])
def test_a_historical_window_that_is_not_a_yyyy_mm_dd_date_is_refused_naming_the_line(tmp_path, start, end):
    """The scenario file's dates are documented as YYYY-MM-DD (and the error says so), but any string pandas can
    parse was accepted: an ambiguous 02/03/2026, a time of day that labelled a window the PnL does not cover, or a
    timestamp with a zone that crashed the risk run with a TypeError naming neither the file nor the line."""
    path = tmp_path / "dates.csv"
    path.write_text(HEADER + "ok,historical,2026-02-02,2026-02-08,,,\n" + f"x,historical,{start},{end},,,\n")
    with pytest.raises(ValidationError, match=r"dates\.csv:3: start_date .* expected dates YYYY-MM-DD"):
        stress.load_scenarios(path)


def test_a_historical_window_whose_first_or_last_close_is_carried_is_not_a_window_of_its_length():
    """X-USD has no daily bar on D1 and D2 (halted: 100 carried) and trades again at 80 on D3. The worst 1-day
    window was D3 (-20%), a move over three days labelled one day, and the worst 5-day window D2..D6 started from
    a carried close. A window's move is price(end) / price(start - 1): it is the move of those k days only when
    both closes are a bar's (as a daily return after a gap is no one-day return: asset_risk, backtests); a window
    resting on a carried one is not searched, and a named window on one has no row for the books holding X (Y's
    book keeps it)."""
    days = pd.date_range("2026-01-01", periods=7, freq="D")
    price = np.array([[100.0, 100, 100, 80, 82, 83, 82], [10.0, 11, 10, 10.5, 10, 10, 10.2]]).T
    carried = np.zeros_like(price, dtype=bool)
    carried[[1, 2], 0] = True
    exposure = np.array([[82.0, 0.0], [0.0, 10.2]])                  # P1: 1 X, P2: 1 Y (today's values)
    named = pd.DataFrame({"scenario_id": ["halt_days"], "start_date": [days[2]], "end_date": [days[3]],
                          "description": ["over the halt"]})
    scenarios = stress.Scenarios(named, stress.Scenarios.empty().shocks)
    out = stress.stress_rows(days, price, exposure, np.abs(exposure).sum(axis=0), ["P1", "P2"], ["X-USD", "Y-USD"],
                             "USD", scenarios, lambda shocks: {}, carried=carried)
    got = out.set_index(["portfolio_id", "scenario_id"])
    # 1-day windows of X on two bars: D4 +2.5%, D5 83/82 - 1, D6 82/83 - 1 (the worst)
    assert got.loc[("P1", "worst_1d"), "pnl"] == pytest.approx(82 * (82 / 83 - 1))
    assert got.loc[("P1", "worst_1d"), "window_start"] == days[6]
    # 5-day windows: only D1..D5 (from D0's close, a bar, to D5's): 83 / 100 - 1
    assert got.loc[("P1", "worst_5d"), "pnl"] == pytest.approx(82 * (83 / 100 - 1))
    assert (got.loc[("P1", "worst_5d"), "window_start"], got.loc[("P1", "worst_5d"), "window_end"]) == (days[1],
                                                                                                      days[5])
    assert ("P1", "halt_days") not in got.index
    assert got.loc[("P2", "halt_days"), "pnl"] == pytest.approx(10.2 * (10.5 / 11 - 1))
    assert got.loc[("P2", "worst_1d"), "pnl"] == pytest.approx(10.2 * (10 / 11 - 1))
