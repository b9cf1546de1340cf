"""The one list of the risk figures: VaR/ES methods, their confidences, and the measures (a leaf: no imports).

Everything else derives from it: the engine, the firm and the intraday revaluation compute the methods of their
scope (`etl.risk.book_var`); the warehouse declares their columns and describes them (`etl.warehouse.schema`, the
generated dbt YAML); limits check them; the HTML report and the cockpit show every method. Adding a method or a
measure is one entry here (plus its maths, its test and its line in docs/risk_conventions.md).

Columns: a per-method measure is `<measure>_<confidence>_<method>` with the confidence in percent without the
point (0.99 -> 99, 0.995 -> 995), e.g. `var_99_hist`; intraday names its historical figures `var_99` (the
contract's). A plain measure is its own column (`vol_20d`).
"""

from __future__ import annotations

from dataclasses import dataclass

CONFIDENCES = (0.95, 0.99)
BACKTEST_CONFIDENCES = (0.95, 0.975, 0.99)   # 97.5%: the Basel ES level
SCOPES = ("portfolio", "firm", "intraday", "asset")   # each portfolio's book; the whole book in USD; 5-minute; products
EVERYWHERE = ("portfolio", "firm", "intraday")


@dataclass(frozen=True)
class Method:
    name: str                 # the column suffix and fact_var_backtest.method
    label: str                # short, for tables
    description: str          # what it is, in column descriptions
    convention: str           # how the figure is computed, one line (docs/risk_conventions.md has the detail)
    confidences: tuple[float, ...] = CONFIDENCES
    scopes: tuple[str, ...] = EVERYWHERE
    null_note: str = ""       # when a figure may be NULL


METHODS: tuple[Method, ...] = (
    Method("hist", "Historical", "historical simulation",
           "linear quantile of the losses of today's exposures on the last N daily returns; ES the mean loss >= VaR"),
    Method("param", "Parametric", "parametric (variance-covariance)",
           "delta-normal, zero mean: z sigma with sigma^2 = e'Ce, C the sample covariance of the same returns"),
    Method("mc", "Monte Carlo", "Monte Carlo",
           "seeded scenarios of correlated normal or Student-t returns scaled to C; quantile as historical"),
    Method("fhs_ewma", "Filtered historical (EWMA)", "filtered historical simulation (EWMA volatility)",
           "historical returns devolatilised by EWMA and rescaled to today's EWMA volatility",
           scopes=("portfolio", "firm")),
    Method("garch_t", "Filtered historical (GARCH-t)", "GARCH(1,1) with Student-t innovations",
           "historical returns devolatilised by GARCH(1,1)-t and rescaled to its one-day forecast",
           scopes=("portfolio", "firm")),
    Method("param_cf", "Cornish-Fisher", "parametric Cornish-Fisher (skewness and excess kurtosis of the "
           "historical losses)", "the normal quantile corrected for the skewness and kurtosis of the historical losses",
           scopes=("portfolio",), null_note="NULL: outside its domain"),
    Method("param_t", "Student-t", "parametric Student-t (scale and degrees of freedom by maximum likelihood)",
           "a zero-mean Student-t fitted to the historical losses by maximum likelihood", scopes=("portfolio",)),
    Method("evt_gpd", "EVT (GPD tail)", "peaks over the 90% threshold, generalised Pareto tail",
           "a generalised Pareto tail fitted to the historical losses above their 90% quantile",
           confidences=(*CONFIDENCES, 0.995), scopes=("portfolio",), null_note="NULL: uncomputable"),
)
BY_NAME: dict[str, Method] = {m.name: m for m in METHODS}


@dataclass(frozen=True)
class Measure:
    name: str                 # the column (plain) or its prefix (per method)
    label: str
    unit: str                 # "base currency" (a 1-day loss amount), "USD", "fraction", "annualised fraction"
    description: str          # per method: {pct} and {method} are filled in
    per_method: bool = False  # one column per method and confidence
    scopes: tuple[str, ...] = ("portfolio",)
    function: str = ""        # plain measures of a return series: the etl.risk.risk_returns function
    window: int = 0           # its window in days (the function's second argument)


MEASURES: tuple[Measure, ...] = (
    Measure("var", "VaR", "base currency", "{pct}% value at risk, {method}: a positive 1-day loss amount in base "
            "currency.", per_method=True, scopes=EVERYWHERE),
    Measure("es", "ES", "base currency", "{pct}% expected shortfall, {method}: a positive 1-day loss amount in base "
            "currency.", per_method=True, scopes=EVERYWHERE),
    Measure("sum_standalone_var", "Sum of standalone VaR", "USD", "Sum over portfolios of their standalone VaR "
            "{pct}% ({method}), each measured in USD.", per_method=True, scopes=("firm",)),
    Measure("diversification_benefit", "Diversification benefit", "USD", "Sum of the portfolios' standalone VaR "
            "{pct}% minus the firm's ({method}), in USD.", per_method=True, scopes=("firm",)),
    Measure("vol_20d", "Vol 20d", "annualised fraction", "Annualised volatility of daily returns over 20 days "
            "(fraction, x sqrt(RISK_ANNUALIZATION_DAYS), 365 by default).", scopes=("portfolio", "asset"),
            function="window_vol", window=20),
    Measure("vol_30d", "Vol 30d", "annualised fraction", "Annualised volatility of daily returns over 30 days "
            "(fraction, x sqrt(RISK_ANNUALIZATION_DAYS), 365 by default).", scopes=("portfolio", "asset"),
            function="window_vol", window=30),
    Measure("semidev_60d", "Downside semi-dev 60d", "annualised fraction", "Annualised downside semi-deviation "
            "(target 0) of daily returns over 60 days (fraction, x sqrt(RISK_ANNUALIZATION_DAYS), 365 by default).",
            function="downside_semideviation", window=60),
    Measure("vol_ewma", "Vol EWMA", "annualised fraction", "Annualised EWMA volatility of daily returns "
            "(RiskMetrics lambda, fraction, x sqrt(RISK_ANNUALIZATION_DAYS)).", scopes=("portfolio", "asset")),
    Measure("max_drawdown", "Max drawdown", "fraction", "Largest peak-to-trough fall over the lookback, a negative "
            "fraction (0 = none).", scopes=("portfolio", "asset")),
    Measure("drawdown_from_peak", "Drawdown from peak", "fraction", "Current drawdown from the running peak over the "
            "lookback, a negative fraction (0 = at a high): the measure drawdown limits are checked on."),
)
MEASURE: dict[str, Measure] = {m.name: m for m in MEASURES}

@dataclass(frozen=True)
class Limit:
    name: str                 # limit_type; dim_portfolio.<name>_limit
    label: str
    unit: str                 # "base currency" (an amount) or "fraction"


LIMITS: tuple[Limit, ...] = (
    Limit("var", "VaR", "base currency"),
    Limit("concentration", "Concentration", "fraction"),
    Limit("drawdown", "Drawdown", "fraction"),
    Limit("lvar", "Liquidity-adjusted VaR", "base currency"),
)
LIMIT_TYPES: tuple[str, ...] = tuple(limit.name for limit in LIMITS)
FRACTION_LIMITS: frozenset[str] = frozenset(limit.name for limit in LIMITS if limit.unit == "fraction")


def pct(confidence: float) -> str:
    """0.95 -> '95', 0.995 -> '995': the confidence as it appears in column names."""
    return f"{confidence * 100:g}".replace(".", "")


def column(measure: str, confidence: float, method: str, scope: str = "portfolio") -> str:
    """The column of a per-method measure: var_99_hist (intraday's historical figure: var_99)."""
    if scope == "intraday" and method == "hist":
        return f"{measure}_{pct(confidence)}"
    return f"{measure}_{pct(confidence)}_{method}"


def methods(scope: str) -> tuple[Method, ...]:
    """The methods computed in `scope`, in registry order."""
    return tuple(m for m in METHODS if scope in m.scopes)


def method_names(scope: str) -> tuple[str, ...]:
    return tuple(m.name for m in methods(scope))


def plain_measures(scope: str) -> tuple[Measure, ...]:
    """The measures of `scope` that are one column each (vol_20d, max_drawdown, ...)."""
    return tuple(m for m in MEASURES if scope in m.scopes and not m.per_method)


def series_measures(scope: str) -> tuple[Measure, ...]:
    """The plain measures of `scope` computed by a risk_returns function of the daily returns."""
    return tuple(m for m in plain_measures(scope) if m.function)


def columns(scope: str) -> dict[str, str]:
    """Every measure column of `scope` -> its description: the per-method ones by method, confidence and measure
    (var_95_hist, es_95_hist, var_99_hist, ...), then the plain ones."""
    here = [m for m in MEASURES if scope in m.scopes]
    out = {}
    for method in methods(scope):
        note = f" ({method.null_note})" if method.null_note else ""
        for c in method.confidences:
            for measure in (m for m in here if m.per_method):
                out[column(measure.name, c, method.name, scope)] = measure.description.format(
                    pct=f"{c * 100:g}", method=method.description + note)
    out.update({m.name: m.description for m in plain_measures(scope)})
    return out


def var_columns(scope: str) -> list[str]:
    """The VaR columns of `scope` (var_95_hist, ..., var_995_evt_gpd): what a portfolio's var_limit_metric may name
    (checked in portfolios.csv and in gold's dim_portfolio)."""
    return [c for c in columns(scope) if c.startswith("var_")]


def grid(scope: str, kinds: tuple[str, ...] = ("var", "es")) -> tuple[list[tuple[str, str]],
                                                                   list[tuple[Method, dict[str, str]]]]:
    """The VaR/ES table the report and the cockpit show for `scope`, one row per method: headers [(key, label)]
    (var_95 "VaR 95%", ...: each measure at every confidence any method has) and per method {key: its column}
    (a key the method does not compute is absent)."""
    confs = sorted({c for m in methods(scope) for c in m.confidences})
    headers = [(f"{k}_{pct(c)}", f"{MEASURE[k].label} {c * 100:g}%") for k in kinds for c in confs]
    rows = [(m, {f"{k}_{pct(c)}": column(k, c, m.name, scope) for k in kinds for c in m.confidences})
            for m in methods(scope)]
    return headers, rows


def descriptions() -> dict[str, str]:
    """Every measure column of every scope -> its description (a name means one thing everywhere)."""
    out: dict[str, str] = {}
    for scope in SCOPES:
        out.update(columns(scope))
    return out
