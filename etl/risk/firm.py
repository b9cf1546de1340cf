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

from etl.risk import contributions, filtered, risk_returns, stress, var

CONFIDENCES = (0.95, 0.99)
FIRM_ID = "FIRM"


def _name(kind: str, confidence: float, method: str) -> str:
    return f"{kind}_{round(confidence * 100)}_{method}"


def book_var_es(window: np.ndarray, fhs: dict[str, np.ndarray], exposure: np.ndarray, z: np.ndarray,
                scale: np.ndarray) -> dict[str, np.ndarray]:
    """{var_95_hist: (P,), ...} for every method and confidence: returns window (N, A), FHS windows per method
    (N, A), exposures (A, P)."""
    out = {}
    scen = {"hist": window, **fhs}
    for method, w in scen.items():
        for c, (v, e) in var.var_es_from_losses(var.historical_losses(w, exposure), CONFIDENCES).items():
            out[_name("var", c, method)], out[_name("es", c, method)] = v, e
    cov = var.covariance(window)
    sigma = var.portfolio_sigma(cov, exposure)
    for c in CONFIDENCES:
        out[_name("var", c, "param")], out[_name("es", c, "param")] = var.parametric_var_es(sigma, c)
    for c, (v, e) in var.var_es_from_losses(var.mc_losses(z, scale, cov, exposure), CONFIDENCES).items():
        out[_name("var", c, "mc")], out[_name("es", c, "mc")] = v, e
    return out


def firm_tables(days: pd.DatetimeIndex, usd_price: np.ndarray, mv_usd: np.ndarray, pids: list[str],
                held: list[str], z: np.ndarray, scale: np.ndarray, n_ret: int, sig: dict[str, np.ndarray],
                scenarios: stress.Scenarios, usd_move_of) -> dict[str, pd.DataFrame]:
    """firm_risk (one row), the firm-scope risk_contributions and stress_results rows. usd_price (T, A);
    mv_usd (P, A) today's USD market values; sig {method: (T, A)} filtered USD volatilities."""
    as_of = days[-1]
    asset_ret = risk_returns.simple_returns(usd_price)
    window = asset_ret[-n_ret:]
    fhs = {m: filtered.fhs_window(filtered.standardised(asset_ret, s)[-n_ret:], s[-1]) for m, s in sig.items()}
    e_firm = mv_usd.sum(axis=0)                                          # (A,)
    expo = np.column_stack([mv_usd.T, e_firm])                           # (A, P + 1): standalone, then the firm
    figures = book_var_es(window, fhs, expo, z, scale)
    gross = np.abs(mv_usd).sum()
    row = {"as_of_date": as_of, **{k: v[-1] for k, v in figures.items()}}
    for c in CONFIDENCES:
        for method in ("hist", "param", "mc", *sig):
            col = _name("var", c, method)
            row[f"sum_standalone_{col}"] = v = figures[col][:-1].sum()
            row[f"diversification_benefit_{round(c * 100)}_{method}"] = v - figures[col][-1]
    row["diversification_benefit"] = row["diversification_benefit_99_hist"]
    row.update({"market_value": e_firm.sum(), "gross_exposure": gross, "n_portfolios": len(pids),
                "n_positions": int((mv_usd != 0).sum()), "lookback_days": n_ret, "currency": "USD"})
    firm_risk = pd.DataFrame([row])

    # Euler contributions of each position (portfolio p, asset a) to the firm figures
    cov = var.covariance(window)
    pi, ai = np.nonzero(mv_usd)
    pos = mv_usd[pi, ai]
    cols = {}
    for c in CONFIDENCES:
        _, marginal = contributions.parametric(cov, e_firm[:, None], c)
        cols[_name("component_var", c, "param")] = pos * marginal[ai, 0]
        cols[_name("marginal_var", c, "param")] = marginal[ai, 0]
    for c, m in contributions.tail_mean_returns(window, e_firm[:, None], CONFIDENCES).items():
        cols[_name("component_es", c, "hist")] = -pos * m[ai, 0]
    contrib = pd.DataFrame({"portfolio_id": np.asarray(pids)[pi], "product_id": np.asarray(held)[ai],
                            "as_of_date": as_of, "scope": "firm", "exposure": pos, **cols, "currency": "USD"})
    stress_df = stress.stress_rows(days, usd_price, e_firm[:, None], np.array([gross]), [FIRM_ID], held, "USD",
                                   scenarios, usd_move_of, scope="firm")
    return {"firm_risk": firm_risk, "risk_contributions": contrib, "stress_results": stress_df}
