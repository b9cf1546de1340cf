"""The firm: every portfolio's positions in USD as one book (pandas out; maths from the sibling modules).

The firm's exposure to asset a is e_a = sum over portfolios of the position's USD market value (quantity x close x
the quote's USD rate); its scenarios are the USD daily returns of the assets, so the firm VaR/ES (every method,
95/99) are exactly those of one USD portfolio holding all positions. The standalone VaR summed for the
diversification benefit is each portfolio's VaR measured the same way (its positions in USD, USD returns): for a
USD-based portfolio that is its own risk_metrics figure; for another base currency it is its USD risk, not its
base-currency VaR converted (a BTC-based book has no BTC risk in BTC, but has it in USD).
diversification_benefit = sum of standalone VaR - firm VaR (>= 0 for the parametric method, which is
sub-additive; historical VaR is not always). Euler contributions of every position to the firm figures
(scope 'firm') sum to the firm VaR/ES; summed per portfolio they are each portfolio's share of the firm risk.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from etl import measures
from etl.measures import CONFIDENCES
from etl.risk import book_var, contributions, risk_returns, stress

FIRM_ID = "FIRM"


def firm_tables(days: pd.DatetimeIndex, usd_price: np.ndarray, mv_usd: np.ndarray, pids: list[str],
                held: list[str], z: np.ndarray, scale: np.ndarray, n_ret: int, sig: dict[str, np.ndarray],
                scenarios: stress.Scenarios, usd_move_of, carried: np.ndarray | None = None) -> dict[str, pd.DataFrame]:
    """firm_risk (one row), the firm-scope risk_contributions and stress_results rows. usd_price (T, A);
    mv_usd (P, A) today's USD market values; sig {method: (T, A)} filtered USD volatilities; carried (T, A): where
    a USD price rests on a carried-forward close (stress windows)."""
    as_of = days[-1]
    asset_ret = risk_returns.simple_returns(usd_price)
    scen = book_var.Scenarios.last(asset_ret, n_ret, sig, z, scale)
    window = scen.window
    e_firm = mv_usd.sum(axis=0)                                          # (A,)
    expo = np.column_stack([mv_usd.T, e_firm])                           # (A, P + 1): standalone, then the firm
    figures = book_var.book_var_es(scen, expo, "firm")
    gross = np.abs(mv_usd).sum()
    row = {"as_of_date": as_of, **{k: v[-1] for k, v in figures.items()}}
    for method in measures.methods("firm"):
        for c in method.confidences:
            col = measures.column("var", c, method.name)
            row[measures.column("sum_standalone_var", c, method.name)] = v = figures[col][:-1].sum()
            row[measures.column("diversification_benefit", c, method.name)] = v - figures[col][-1]
    row["diversification_benefit"] = row["diversification_benefit_99_hist"]
    row.update({"market_value": e_firm.sum(), "gross_exposure": gross, "n_portfolios": len(pids),
                "n_positions": int((mv_usd != 0).sum()), "lookback_days": n_ret, "currency": "USD"})
    firm_risk = pd.DataFrame([row])

    # Euler contributions of each position (portfolio p, asset a) to the firm figures
    cov = scen.cov
    pi, ai = np.nonzero(mv_usd)
    pos = mv_usd[pi, ai]
    cols = {}
    for c in CONFIDENCES:
        _, marginal = contributions.parametric(cov, e_firm[:, None], c)
        cols[measures.column("component_var", c, "param")] = pos * marginal[ai, 0]
        cols[measures.column("marginal_var", c, "param")] = marginal[ai, 0]
    for c, m in contributions.tail_mean_returns(window, e_firm[:, None], CONFIDENCES).items():
        cols[measures.column("component_es", c, "hist")] = -pos * m[ai, 0]
    contrib = pd.DataFrame({"portfolio_id": np.asarray(pids)[pi], "product_id": np.asarray(held)[ai],
                            "as_of_date": as_of, "scope": "firm", "exposure": pos, **cols, "currency": "USD"})
    stress_df = stress.stress_rows(days, usd_price, e_firm[:, None], np.array([gross]), [FIRM_ID], held, "USD",
                                   scenarios, usd_move_of, scope="firm", carried=carried)
    return {"firm_risk": firm_risk, "risk_contributions": contrib, "stress_results": stress_df}
