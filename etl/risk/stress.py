"""Stress tests: today's book revalued under historical windows and hypothetical shocks.

Every scenario is a vector of asset returns R (A,) in the portfolio's base currency, applied to today's market
values: PnL = sum_a MV_a R_a (full revaluation of linear positions: the new price is price x (1 + R_a)),
PnL % = PnL / gross exposure.
- Historical, worst windows: every k-day window of the price history (k = 1 and 5), R = price(end) / price(start
  - 1) - 1 (the compound move over the k days); the window with the lowest PnL, per portfolio and for the firm.
  A book holding nothing has no worst window (every one is 0): PnL 0, window dates empty.
- Historical, named windows (config, `start_date`..`end_date`): the same R for that window; a window not inside
  the price history is skipped with a warning.
- A window whose first (start - 1) or last close of a holding is carried forward (no bar, or stuck) is no move of
  its dates: not searched for that book's worst, and a named one has no row for that book (logged).
- Hypothetical (config, shocks per product to USD prices): a product without its own shock moves beta x the
  shock of the anchor (BTC-USD), beta the OLS slope of its daily USD returns on BTC-USD's over the VaR lookback
  (1 for BTC-USD itself; 0 moves without an anchor shock). A run without BTC-USD prices (no book needs them) has
  no beta: a book holding a product that would move through it has no row for that scenario (logged), not a 0;
  nor has a beta resting on more than RISK_MAX_CARRIED_DAYS carried-forward USD closes of the product or the
  anchor in the lookback (a halt's or a stuck feed's zero returns shrink the slope: etl.risk.engine._usd_moves).
  The USD moves m become base-currency returns
  R_a = (1 + m_a) / (1 + m_base) - 1, m_base the move of <BASE>-USD (0 for USD).

The config file (`RISK_STRESS_SCENARIOS`, default etl/reference_data/stress_scenarios.csv) has the columns
scenario_id, scenario_type (historical | hypothetical), start_date, end_date, product_id, shock, description:
historical rows give the dates (one row per scenario), hypothetical rows a product of the instrument master and a
shock (a fraction > -1, one row per shocked product). A bad row is a ValidationError naming the file and line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from etl.errors import ValidationError, some
from etl.reference import read_reference_csv

log = logging.getLogger(__name__)

ANCHOR = "BTC-USD"
WORST_WINDOWS = (1, 5)
COLUMNS = ["scenario_id", "scenario_type", "start_date", "end_date", "product_id", "shock", "description"]


@dataclass(frozen=True)
class Scenarios:
    named: pd.DataFrame       # scenario_id, start_date, end_date, description
    shocks: pd.DataFrame      # scenario_id, product_id, shock, description

    @classmethod
    def empty(cls) -> Scenarios:
        return cls(pd.DataFrame(columns=["scenario_id", "start_date", "end_date", "description"]),
                   pd.DataFrame(columns=["scenario_id", "product_id", "shock", "description"]))


SHIPPED = Path(__file__).resolve().parents[1] / "reference_data" / "stress_scenarios.csv"   # the default file


def load_scenarios(path: Path | None, known: set[str] | None = None) -> Scenarios:
    """Read and check the scenario file; None or a missing file = no configured scenarios (logged). known: the
    instrument master's products (in a file of one's own, a shock on another one is a typo that would move nothing;
    the shipped file names the shipped universe's products, which an own master need not list)."""
    if path is None or not Path(path).exists():
        log.warning("no stress scenario file at %s: only the worst historical windows are run", path)
        return Scenarios.empty()
    df = read_reference_csv(Path(path), COLUMNS)
    named, shocks, kinds = [], [], {}
    for line, row in zip(df.index, df.itertuples(index=False), strict=True):  # index: the file line
        where = f"{path}:{line}"
        sid, kind = row.scenario_id, row.scenario_type
        if not sid:
            raise ValidationError(f"{where}: scenario_id is empty")
        if sid.startswith("worst_"):
            raise ValidationError(f"{where}: scenario_id {sid!r}: the prefix worst_ is reserved for the worst windows")
        if kind not in ("historical", "hypothetical"):
            raise ValidationError(f"{where}: scenario_type {kind!r}: expected historical or hypothetical")
        if kinds.setdefault(sid, kind) != kind:
            raise ValidationError(f"{where}: scenario {sid!r} is both historical and hypothetical")
        if kind == "historical":
            try:
                # strictly YYYY-MM-DD: a UTC day (no time, no zone, no day/month order to guess)
                start, end = (pd.to_datetime(d, format="%Y-%m-%d") if d else pd.NaT
                              for d in (row.start_date, row.end_date))
            except ValueError:
                raise ValidationError(f"{where}: start_date {row.start_date!r} / end_date {row.end_date!r}: "
                                      f"expected dates YYYY-MM-DD") from None
            if pd.isna(start) or pd.isna(end) or start > end:
                raise ValidationError(f"{where}: historical scenario {sid!r} needs start_date <= end_date")
            if row.product_id or row.shock:
                raise ValidationError(f"{where}: historical scenario {sid!r}: product_id and shock must be empty")
            if any(n[0] == sid for n in named):
                raise ValidationError(f"{where}: duplicate historical scenario {sid!r}")
            named.append((sid, start, end, row.description))
        else:
            if row.start_date or row.end_date:
                raise ValidationError(f"{where}: hypothetical scenario {sid!r}: start_date and end_date must be empty")
            if not row.product_id:
                raise ValidationError(f"{where}: hypothetical scenario {sid!r}: product_id is empty")
            if known is not None and row.product_id not in known and Path(path).resolve() != SHIPPED:
                raise ValidationError(f"{where}: hypothetical scenario {sid!r}: product_id {row.product_id!r} is not "
                                      "in the instrument master (instruments.csv): fix the name or add the product")
            try:
                shock = float(row.shock)
            except ValueError:
                raise ValidationError(f"{where}: shock {row.shock!r} is not a number (a fraction, -0.3 = -30%)") \
                    from None
            if not np.isfinite(shock) or shock <= -1:
                raise ValidationError(f"{where}: shock {row.shock!r} must be a finite fraction > -1")
            if any(s[0] == sid and s[1] == row.product_id for s in shocks):
                raise ValidationError(f"{where}: scenario {sid!r} shocks {row.product_id} twice")
            shocks.append((sid, row.product_id, shock, row.description))
    return Scenarios(pd.DataFrame(named, columns=["scenario_id", "start_date", "end_date", "description"]),
                     pd.DataFrame(shocks, columns=["scenario_id", "product_id", "shock", "description"]))


def within(scenarios: Scenarios, days: pd.DatetimeIndex, warn: bool = False) -> Scenarios:
    """The scenarios whose named window lies inside the price history (a day before its start is needed too);
    with warn, each one left out is logged."""
    keep = (scenarios.named["start_date"] > days[0]) & (scenarios.named["end_date"] <= days[-1]) \
        if len(scenarios.named) and len(days) else pd.Series(False, index=scenarios.named.index)
    if warn:
        for sc in scenarios.named[~keep].itertuples(index=False):
            log.warning("stress scenario %s (%s..%s) is not inside the price history %s..%s: skipped",
                        sc.scenario_id, sc.start_date.date(), sc.end_date.date(), days[0].date(), days[-1].date())
    return Scenarios(scenarios.named[keep], scenarios.shocks)


# ---- maths ----------------------------------------------------------------------------------------------------
def window_returns(price: np.ndarray, k: int) -> np.ndarray:
    """Compound k-day returns of every window: (T, A) prices -> (T-k, A); row j ends on day j+k."""
    return price[k:] / price[:-k] - 1.0


def worst_window(price: np.ndarray, exposure: np.ndarray, k: int,
                 carried: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(PnL (P,), index of the window's last day (P,)) of the worst k-day window for each exposure column.
    carried (T, A): closes carried forward; a window whose first (start - 1) or last close of a held asset is
    carried is not a k-day move and is not searched (PnL NaN, index -1 for a book with no window left)."""
    pnl = window_returns(price, k) @ exposure                        # (W, P)
    if carried is not None:
        ends = (carried[k:] | carried[:-k]).astype(np.float64)      # (W, A)
        pnl = np.where(ends @ (exposure != 0) > 0, np.inf, pnl)
    j = pnl.argmin(axis=0)
    worst = pnl[j, np.arange(pnl.shape[1])]
    return np.where(np.isinf(worst), np.nan, worst), np.where(np.isinf(worst), -1, j + k)


def betas(usd_returns: np.ndarray, anchor: int) -> np.ndarray:
    """OLS slopes (with intercept) of each column of (N, A) on column `anchor`; 0 when the anchor is flat."""
    x = usd_returns[:, anchor]
    xc = x - x.mean()
    yc = usd_returns - usd_returns.mean(axis=0)
    den = xc @ xc
    return (xc @ yc) / den if den > 0 else np.zeros(usd_returns.shape[1])


def hypothetical_moves(shocks: dict[str, float], products: list[str], beta: np.ndarray) -> np.ndarray:
    """USD price moves (A,): a product's own shock, else beta x the anchor's shock (0 without one); NaN where
    that needs a beta that is unknown (NaN: no anchor prices in the run, or too many carried closes under it)."""
    anchor = shocks.get(ANCHOR, 0.0)
    return np.array([shocks.get(p, b * anchor if anchor else 0.0) for p, b in zip(products, beta, strict=True)])


def to_base(moves_usd: np.ndarray, base_move: float) -> np.ndarray:
    """USD moves -> returns in a base currency whose own USD price moves by base_move."""
    return (1.0 + moves_usd) / (1.0 + base_move) - 1.0


def stress_rows(days: pd.DatetimeIndex, price: np.ndarray, exposure: np.ndarray, gross: np.ndarray,
                ids: list[str], held: list[str], base: str, scenarios: Scenarios, usd_move_of,
                scope: str = "portfolio", carried: np.ndarray | None = None) -> pd.DataFrame:
    """Every scenario for one currency group (or the firm): price (T, A) in `base`, exposure (A, P) today's
    market values, gross (P,); usd_move_of(shocks) -> {product or '<CCY>-USD': USD move} for the hypotheticals.
    carried (T, A): where the price rests on a carried-forward close (its own or a converting `<CCY>-USD`'s;
    None: none does): a historical window from or to one is no move of its dates, left out for the books holding
    that asset."""
    as_of = days[-1]
    p = len(ids)
    rows = []

    def add(sid, kind, pnl, start, end, description, keep=None):
        with np.errstate(invalid="ignore", divide="ignore"):
            pct = np.where(gross > 0, pnl / np.where(gross > 0, gross, 1.0), np.nan)
        df = pd.DataFrame({"portfolio_id": ids, "as_of_date": as_of, "scenario_id": sid,
                           "scenario_type": kind, "pnl": pnl, "pnl_pct": pct, "scope": scope,
                           "window_start": start, "window_end": end, "description": description,
                           "base_currency": base})
        rows.append(df if keep is None else df[keep])

    holds = (exposure != 0).any(axis=0)                              # (P,) a book holding nothing has no worst window
    for k in WORST_WINDOWS:
        if len(days) > k:
            pnl, j = worst_window(price, exposure, k, carried)
            found = j >= 0                                          # a book whose every window rests on a carry
            if not found.all():
                log.warning("no %s-day window of the price history without a carried-forward close for %s: no worst_%sd",
                            k, some(np.asarray(ids)[~found]), k)
            add(f"worst_{k}d", "historical", np.nan_to_num(pnl), days[j - k + 1].where(holds), days[j].where(holds),
                f"worst {k}-day window of the price history for this book", found)
    for sc in within(scenarios, days).named.itertuples(index=False):
        i0, i1 = days.searchsorted(sc.start_date), days.searchsorted(sc.end_date)
        r = price[i1] / price[i0 - 1] - 1.0
        off = np.zeros(p, dtype=bool) if carried is None else \
            ((carried[i1] | carried[i0 - 1])[:, None] & (exposure != 0)).any(axis=0)
        if off.any():
            log.warning("stress scenario %s: a close at %s or %s of a holding of %s is carried forward (no bar): "
                        "skipped for them", sc.scenario_id, days[i0 - 1].date(), days[i1].date(),
                        some(np.asarray(ids)[off]))
        add(sc.scenario_id, "historical", r @ exposure, np.repeat(sc.start_date, p), np.repeat(sc.end_date, p),
            sc.description, ~off)
    for sid, g in scenarios.shocks.groupby("scenario_id", sort=True):
        moves = usd_move_of(dict(zip(g["product_id"], g["shock"], strict=True)))
        r = to_base(np.array([moves[a] for a in held]), moves.get(f"{base}-USD", 0.0) if base != "USD" else 0.0)
        pnl = np.nan_to_num(r) @ exposure
        # a book holding a product whose move is unknown has no figure: left out, as a window outside the history
        unknown = (np.isnan(r)[:, None] & (exposure != 0)).any(axis=0)
        if unknown.any():
            log.warning("stress scenario %s needs the beta to %s of %s, which is unknown (no %s prices in this run, "
                        "or more than RISK_MAX_CARRIED_DAYS carried closes under it): skipped for %s", sid, ANCHOR,
                        some(np.asarray(held)[np.isnan(r)]), ANCHOR, some(np.asarray(ids)[unknown]))
        add(sid, "hypothetical", pnl, pd.NaT, pd.NaT, "; ".join(sorted(set(g["description"]) - {""})), ~unknown)
    if not rows:
        return pd.DataFrame()
    out = pd.concat(rows, ignore_index=True)
    out["window_start"] = pd.to_datetime(out["window_start"])
    out["window_end"] = pd.to_datetime(out["window_end"])
    return out
