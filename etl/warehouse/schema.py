"""The `raw` schema: one explicitly typed table per input, declared once here.

Each table lists the columns the loader copies (the gold contract columns plus documented extras), its key (the
upsert key and primary key) and where its rows come from: a folder of the Store (silver bars, risk/factor outputs,
the run log) or a reference-data loader. Columns a producer writes but that are not declared here are ignored;
a missing required column is an error, a missing optional one loads as NULL.

Every raw table also gets `loaded_at` (the load transaction's time): dbt's incremental models pick up rows
loaded since their last run with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

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

    @property
    def qualified(self) -> str:
        return f"{RAW}.{self.name}"

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


def _cols(spec: str, pg_type: str) -> tuple[Column, ...]:
    return tuple(Column(name, pg_type) for name in spec.split())


def _opt(spec: str, pg_type: str) -> tuple[Column, ...]:
    return tuple(Column(name, pg_type, required=False) for name in spec.split())


FILTERED_METHODS = ("fhs_ewma", "garch_t")   # volatility-filtered VaR methods (etl.risk.filtered)
OHLCV = _cols("open high low close volume vwap", "double precision")
BAR_EXTRAS = (
    Column("n_candles", "bigint"), Column("is_complete", "boolean"), Column("quote_currency", "text"),
    *_opt("first_candle_at last_candle_at", "timestamptz"),
)

TABLES: tuple[RawTable, ...] = (
    # silver (product_id comes from the hive partition path)
    RawTable("bars_5m", (Column("product_id", "text"), Column("bucket_start", "timestamptz"), *OHLCV, *BAR_EXTRAS),
             key=("product_id", "bucket_start"), source_dir="silver/bars_5m"),
    RawTable("bars_1d", (Column("product_id", "text"), Column("price_date", "date"), *OHLCV, *BAR_EXTRAS),
             key=("product_id", "price_date"), source_dir="silver/bars_1d"),
    # reference data (etl.reference, etl.portfolios)
    RawTable("exchanges", _cols("exchange_id name", "text") + _opt("api_base_url timezone", "text"),
             key=("exchange_id",), replace_all=True),
    RawTable("instruments", _cols("product_id base_currency quote_currency exchange_id asset_class", "text")
             + _opt("display_name", "text"), key=("product_id",), replace_all=True),
    RawTable("portfolios", _cols("portfolio_id name base_currency", "text")
             + _cols("var_limit concentration_limit drawdown_limit", "double precision")
             + _opt("var_limit_metric", "text"),
             key=("portfolio_id",), replace_all=True),
    RawTable("positions", _cols("portfolio_id product_id", "text") + (Column("as_of_date", "date"),)
             + _cols("quantity avg_cost", "double precision"),
             key=("portfolio_id", "product_id", "as_of_date"), replace_all=True),
    # risk outputs: outputs/<table>/as_of_date=D/<run_id>.parquet, committed by outputs/_commits/risk/...
    RawTable("positions_valued", _cols("portfolio_id product_id", "text") + (Column("as_of_date", "date"),)
             + _cols("quantity avg_cost close market_value unrealized_pnl", "double precision")
             + _opt("weight fx_rate", "double precision") + _opt("base_currency", "text"),
             key=("portfolio_id", "product_id", "as_of_date"), source_dir="outputs/positions_valued"),
    RawTable("portfolio_valuation", (Column("portfolio_id", "text"), Column("as_of_date", "date"))
             + _cols("market_value unrealized_pnl gross_exposure net_exposure long_exposure short_exposure "
                     "concentration_pct", "double precision")
             + _opt("drawdown", "double precision") + _opt("base_currency", "text"),
             key=("portfolio_id", "as_of_date"), source_dir="outputs/portfolio_valuation"),
    RawTable("pnl_daily", (Column("portfolio_id", "text"), Column("as_of_date", "date"))
             + _cols("daily_pnl mtd_pnl", "double precision")
             + _opt("daily_return", "double precision") + _opt("base_currency", "text"),
             key=("portfolio_id", "as_of_date"), source_dir="outputs/pnl_daily"),
    RawTable("risk_metrics", (Column("portfolio_id", "text"), Column("as_of_date", "date"))
             + _cols("var_95_hist var_99_hist es_95_hist es_99_hist var_95_param var_99_param es_95_param "
                     "es_99_param var_95_mc var_99_mc es_95_mc es_99_mc vol_20d vol_30d vol_ewma max_drawdown",
                     "double precision")
             + (Column("lookback_days", "bigint"),)
             + _opt("gross_exposure", "double precision") + _opt("mc_scenarios", "bigint")
             + _opt("base_currency mc_distribution", "text")
             + _opt(" ".join(f"{k}_{c}_{m}" for m in FILTERED_METHODS for c in (95, 99) for k in ("var", "es")),
                    "double precision")
             + _opt("risk_run_id", "text"),  # the committed risk run (etl/commits.py): report freshness check
             key=("portfolio_id", "as_of_date"), source_dir="outputs/risk_metrics"),
    RawTable("asset_risk", (Column("product_id", "text"), Column("as_of_date", "date"))
             + _cols("vol_20d vol_30d vol_ewma max_drawdown worst_daily_return", "double precision")
             + _opt("close daily_return", "double precision") + _opt("worst_daily_return_date", "date")
             + _opt("lookback_days", "bigint") + _opt("quote_currency", "text"),
             key=("product_id", "as_of_date"), source_dir="outputs/asset_risk"),
    RawTable("anomalies", (Column("product_id", "text"), Column("bucket_start", "timestamptz"))
             + _cols("return_value robust_z", "double precision")
             + _opt("close threshold", "double precision") + _opt("as_of_date", "date") + _opt("scale_method", "text"),
             key=("product_id", "bucket_start"), source_dir="outputs/anomalies"),
    RawTable("var_backtest", (Column("portfolio_id", "text"), Column("as_of_date", "date"), Column("method", "text"))
             + _cols("confidence var_forecast realized_pnl", "double precision") + (Column("is_exception", "boolean"),)
             + _opt("forecast_date", "date") + _opt("base_currency", "text")
             + _opt("es_forecast loss_sd", "double precision"),
             key=("portfolio_id", "as_of_date", "method", "confidence"), source_dir="outputs/var_backtest"),
    RawTable("limit_breaches", (Column("portfolio_id", "text"), Column("as_of_date", "date"))
             + _cols("limit_type metric", "text") + _cols("value limit_value", "double precision")
             + _opt("base_currency", "text")
             + _opt("breach_kind", "text"),  # exceeded | uncomputable (value NULL: the metric was NaN/inf)
             key=("portfolio_id", "as_of_date", "limit_type", "metric"), source_dir="outputs/limit_breaches"),
    RawTable("var_backtest_summary", (Column("portfolio_id", "text"), Column("as_of_date", "date"),
                                      Column("method", "text"), Column("confidence", "double precision"))
             + _cols("n_days exceptions", "bigint") + (Column("traffic_light", "text"),)
             + _opt("expected_exceptions kupiec_lr kupiec_p christoffersen_ind_lr christoffersen_ind_p cc_lr cc_p",
                    "double precision") + _opt("window_start window_end", "date"),
             key=("portfolio_id", "as_of_date", "method", "confidence"), source_dir="outputs/var_backtest_summary"),
    RawTable("correlations", _cols("product_id_a product_id_b", "text") + (Column("as_of_date", "date"),
                                                                          Column("correlation", "double precision"))
             + _opt("n_obs", "bigint") + _opt("return_currency", "text"),
             key=("product_id_a", "product_id_b", "as_of_date"), source_dir="outputs/correlations"),
    # drawdowns: portfolios (entity_type 'portfolio') and products ('asset') in one table, keyed by both;
    # the dates are NULL when max_drawdown = 0 (never below a peak) or, for recovery_date, when not recovered yet
    RawTable("drawdowns", _cols("entity_type entity_id", "text") + (Column("as_of_date", "date"),
                                                                    Column("max_drawdown", "double precision"))
             + _cols("peak_date trough_date recovery_date", "date") + _opt("window_start window_end", "date"),
             key=("entity_type", "entity_id", "as_of_date"), source_dir="outputs/drawdowns"),
    # daily-return anomalies: each as-of file holds the flagged days of the whole history window, so a day is in
    # many files; the key is the flagged day (the last file in path order, i.e. the latest as-of run, wins).
    # The engine's `window` column is not loaded (a reserved word in SQL; it is the anomaly_window setting).
    RawTable("anomalies_daily", (Column("product_id", "text"), Column("price_date", "date"))
             + _cols("return_value robust_z", "double precision") + (Column("as_of_date", "date"),)
             + _opt("threshold", "double precision") + _opt("scale_method", "text"),
             key=("product_id", "price_date"), source_dir="outputs/anomalies_daily"),
    # risk depth (etl.risk.firm, contributions, stress, es_backtest): firm rows carry scope 'firm'
    RawTable("firm_risk", (Column("as_of_date", "date"),)
             + _cols("var_95_hist var_99_hist es_95_hist es_99_hist sum_standalone_var_99_hist "
                     "diversification_benefit", "double precision")
             + _opt(" ".join([f"{k}_{c}_{m}" for m in ("param", "mc", *FILTERED_METHODS) for c in (95, 99)
                              for k in ("var", "es")]
                             + [f"{k}_{c}_{m}" for m in ("hist", "param", "mc", *FILTERED_METHODS) for c in (95, 99)
                                for k in ("sum_standalone_var", "diversification_benefit")
                                if (k, c, m) != ("sum_standalone_var", 99, "hist")]
                             + ["market_value", "gross_exposure"]), "double precision")
             + _opt("n_portfolios n_positions lookback_days", "bigint") + _opt("currency", "text"),
             key=("as_of_date",), source_dir="outputs/firm_risk"),
    RawTable("risk_contributions", _cols("scope portfolio_id product_id", "text") + (Column("as_of_date", "date"),)
             + _cols("component_var_95_param component_var_99_param component_es_95_hist component_es_99_hist "
                     "marginal_var_99_param", "double precision")
             + _opt("marginal_var_95_param exposure", "double precision") + _opt("currency", "text"),
             key=("scope", "portfolio_id", "product_id", "as_of_date"), source_dir="outputs/risk_contributions"),
    RawTable("stress_results", _cols("scope portfolio_id", "text") + (Column("as_of_date", "date"),)
             + _cols("scenario_id scenario_type", "text") + _cols("pnl", "double precision")
             + (Column("pnl_pct", "double precision", required=False),)
             + _opt("window_start window_end", "date") + _opt("description base_currency", "text"),
             key=("scope", "portfolio_id", "scenario_id", "as_of_date"), source_dir="outputs/stress_results"),
    RawTable("var_model_comparison", (Column("portfolio_id", "text"), Column("as_of_date", "date"),
                                      Column("method", "text"), Column("confidence", "double precision"),
                                      Column("exceptions", "bigint"))
             + _cols("kupiec_p christoffersen_p es_test_p", "double precision") + (Column("passes", "boolean"),)
             + _opt("n_days exceedance_residual_n", "bigint") + _opt("traffic_light", "text")
             + _opt("expected_exceptions cc_p z2 z2_p exceedance_residual_mean exceedance_residual_t "
                    "exceedance_residual_p", "double precision")
             + _opt("pass_kupiec pass_christoffersen pass_traffic_light pass_z2 pass_exceedance_residual", "boolean")
             + _opt("window_start window_end", "date"),
             key=("portfolio_id", "as_of_date", "method", "confidence"), source_dir="outputs/var_model_comparison"),
    # factor outputs: outputs/factor_*/date=D/part-0.parquet
    RawTable("factor_returns", (Column("factor_name", "text"), Column("bucket_start", "timestamptz"),
                                Column("factor_return", "double precision")),
             key=("factor_name", "bucket_start"), source_dir="outputs/factor_returns"),
    RawTable("factor_exposures", _cols("product_id factor_name", "text") + (Column("bucket_start", "timestamptz"),)
             + _cols("beta r_squared r_squared_adj", "double precision") + (Column("n_obs", "bigint"),)
             + _opt("alpha", "double precision") + _opt("rank_deficient", "boolean") + _opt("as_of_date", "date"),
             key=("product_id", "factor_name", "bucket_start"), source_dir="outputs/factor_exposures"),
    RawTable("factor_membership", (Column("date", "date"),) + _cols("factor_name product_id", "text")
             + _opt("weight signal", "double precision") + _opt("factor_group bucket", "text")
             + _opt("holding_start holding_end", "timestamptz"),
             key=("date", "factor_name", "product_id"), source_dir="outputs/factor_membership"),
    # the pipeline run log (etl.runlog): runlog/date=D/<record_id>.parquet
    RawTable("pipeline_runs", _cols("record_id run_id dag_id task_id status", "text")
             + _cols("rows_in rows_out", "bigint") + (Column("started_at", "timestamptz"),
                                                      Column("duration_s", "double precision"))
             + (Column("message", "text"), Column("try_number", "bigint", required=False)),
             key=("record_id",), source_dir="runlog"),
)

# intraday risk (etl.risk.intraday): outputs/intraday_*/as_of_date=D/bucket=HHMM/part-0.parquet, one file per run;
# the light intraday load (loader.load_intraday) takes only these and the reference data
INTRADAY_TABLES: tuple[RawTable, ...] = (
    RawTable("intraday_risk", (Column("portfolio_id", "text"), Column("bucket_start", "timestamptz"))
             + _cols("market_value intraday_pnl gross_exposure net_exposure concentration_pct var_95 var_99 es_95 "
                     "es_99", "double precision") + (Column("stale_products", "bigint"),)
             + _opt("long_exposure short_exposure drawdown max_price_age_s var_95_param var_99_param es_95_param "
                    "es_99_param var_95_mc var_99_mc es_95_mc es_99_mc", "double precision")
             + _opt("as_of_date prev_close_date scenario_as_of_date", "date") + _opt("is_scenario_stale", "boolean")
             + _opt("base_currency stale_product_ids", "text"),
             key=("portfolio_id", "bucket_start"), source_dir="outputs/intraday_risk"),
    RawTable("intraday_limit_breaches", (Column("portfolio_id", "text"), Column("bucket_start", "timestamptz"))
             + _cols("limit_type metric status", "text") + _cols("value limit_value utilisation", "double precision")
             + (Column("breached_at", "timestamptz"),) + _opt("as_of_date", "date") + _opt("base_currency", "text"),
             key=("portfolio_id", "bucket_start", "limit_type"), source_dir="outputs/intraday_limit_breaches"),
)
TABLES += INTRADAY_TABLES

BY_NAME: dict[str, RawTable] = {t.name: t for t in TABLES}

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
