"""Settings: the only module that reads the environment.

Every knob of the pipeline lives here with its default. `.env.example` and the README list the same names.
Call `get_settings()` each time you need them (it is cheap) so tests can change the environment.

A `.env` file at the project root (or the file named by PIPELINE_ENV_FILE) supplies values too: a name set in
the environment wins over the file (even when set empty), the file wins over the default. The file holds
`NAME=value` lines: `#` comments and blank lines are skipped, an optional `export ` prefix is allowed, a value
may be quoted ('...' or "..."), and ` #` starts a comment after an unquoted value (docker compose reads the same
file).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from etl.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

COINBASE_URL = "https://api.exchange.coinbase.com"
COINBASE_WS_URL = "wss://advanced-trade-ws.coinbase.com"
# The WebSocket client's message size cap. The `level2` snapshot is the whole book, over 4 MiB for BTC-USD most of
# the time (ccxt issue #23597; Coinbase asks for the largest receive buffer possible): 64 MiB leaves a wide margin.
STREAM_MAX_MESSAGE_BYTES = 64 << 20
# The sample book's USD products (the benchmarks' universe). PIPELINE_PRODUCTS has no fixed default: unset, the
# pipeline ingests what the book holds (etl.reference_set.Reference.products_to_ingest).
DEFAULT_PRODUCTS = (
    "BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD", "ADA-USD", "DOGE-USD",
    "AVAX-USD", "LINK-USD", "DOT-USD", "LTC-USD", "UNI-USD", "ATOM-USD",
)


def env_file() -> Path:
    """The `.env` file the settings read: PIPELINE_ENV_FILE (environment only), else `.env` at the project root."""
    return Path(os.environ.get("PIPELINE_ENV_FILE", "").strip() or PROJECT_ROOT / ".env")


def read_env_file(path: Path) -> dict[str, str]:
    """`NAME=value` pairs of a .env file (the format in the module docstring); {} when there is no file."""
    try:
        text = path.read_text()
    except (FileNotFoundError, IsADirectoryError):
        return {}
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, value = (part.strip() for part in line.split("=", 1))
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[name] = value
    return values


_file_cache: dict[tuple, dict[str, str]] = {}


def _file_values() -> dict[str, str]:
    """read_env_file(env_file()), re-read only when the file changes (get_settings() is called often)."""
    path = env_file()
    try:
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
    except OSError:
        return {}
    if key not in _file_cache:
        _file_cache.clear()
        _file_cache[key] = read_env_file(path)
    return _file_cache[key]


def _lookup(name: str) -> str | None:
    """The raw value of a setting: the environment first, then the .env file; None when neither sets it."""
    if name in os.environ:
        return os.environ[name]
    return _file_values().get(name)


def _env(name: str, default: str) -> str:
    value = (_lookup(name) or "").strip()
    return value or default


def _parsed(name: str, default: str, parse: Callable[[str], T], expected: str) -> T:
    raw = _env(name, default)
    try:
        return parse(raw)
    except ValueError:
        raise ValueError(f"setting {name}={raw!r} is not {expected}") from None


def _float(name: str, default: float) -> float:
    return _parsed(name, str(default), float, "a number")


def _int(name: str, default: int) -> int:
    return _parsed(name, str(default), int, "a whole number")


def _in_range(name: str, default: float, low: float, high: float = float("inf")) -> float:
    """A number setting that must lie in [low, high]: refused, not clamped (a retention of -1 read as 0 would
    vacuum all history)."""
    value = _float(name, default)
    if not low <= value <= high:
        expected = f">= {low:g}" if high == float("inf") else f"between {low:g} and {high:g}"
        raise ValueError(f"setting {name}={_env(name, str(default))!r} is out of range: expected {expected}")
    return value


def _int_list(name: str, default: str) -> tuple[int, ...]:
    return _parsed(name, default, lambda raw: tuple(int(x) for x in raw.split(",") if x.strip()),
                   "a comma list of whole numbers")


def parse_products(products: str | Iterable[str]) -> list[str]:
    """Product ids from a comma list (or a list of ids): stripped, upper-cased, empty items dropped, order kept."""
    items = products.split(",") if isinstance(products, str) else products
    return [p.strip().upper() for p in items if p and p.strip()]


@dataclass(frozen=True)
class Settings:
    # where things live
    state_dir: Path                      # git-ignored local state: embedded Postgres, Airflow home, logs
    data_dir: str                        # root of bronze/silver/outputs: a local path or a URI (s3://, gs://, file://)
    database_url: str | None             # None = the embedded Postgres under state_dir
    reporting_password: str | None       # password of the read-only `reporting` role (None: local trust auth)
    dbt_target: str                      # dbt profile target: dev (embedded) or prod (any server)
    reference_dir: Path                  # instrument master, portfolios, positions (CSV)
    # market data source
    source: str                          # "simulator" | "coinbase"
    coinbase_api_url: str                # base URL of the Exchange API or of the simulator
    products: tuple[str, ...]            # PIPELINE_PRODUCTS; empty = the book's products (Reference.products_to_ingest)
    granularity: int                     # seconds per candle for intraday ingestion
    simulator_port: int
    simulator_seed: int
    # simulator faults (flags of `python -m etl simulator` override these)
    simulator_fail_rate: float
    simulator_rate_limit_rps: float
    simulator_burst: int
    simulator_latency_ms: float
    simulator_malformed_rate: float
    simulator_late_corrections: bool
    simulator_universe: int              # extra synthetic products (`--universe N`)
    # ingestion
    rate_limit_rps: float                # our own pacing, shared by all requests of a run
    rate_limit_burst: int
    max_workers: int                     # concurrent requests (pacing still applies)
    http_timeout_connect_s: float
    http_timeout_read_s: float
    max_wait_s: float                    # a request failing (5xx, timeout, ...) is retried for this long, then fails
    backoff_initial_s: float             # first retry wait (exponential with jitter from there)
    backoff_max_s: float                 # longest wait between two attempts
    throttle_max_wait_s: float           # a request refused with 429 (not an attempt) gives up after this long
    history_days: int                    # first run with no watermark: how far back to backfill 1-minute candles
    #   (3: the factor model forms buckets on one day, holds them the next, whose betas explain the PnL of the third)
    daily_history_days: int              # daily candles for risk history
    overlap_minutes: int                 # incremental runs re-fetch this much before the watermark (late corrections)
    progress_interval_s: float           # task logs: one progress line of a fetch every this many seconds
    # risk
    annualization_days: int
    var_lookback_days: int
    ewma_lambda: float
    mc_scenarios: int
    mc_seed: int
    mc_distribution: str                 # "normal" | "t"
    mc_t_dof: float
    anomaly_window: int
    anomaly_threshold: float
    backtest_days: int
    max_carried_days: int                # a book's VaR past this many carried-forward closes in its window: NULL
    max_unchanged_closes: int            # a longer run of daily closes equal to the day before's is a stuck feed
    # factor model
    factor_window: int
    factor_min_obs: int
    factor_frequency_s: int              # 60 (1-minute candles) or 300 (5-minute bars)
    factor_formation_minutes: int        # buckets are formed on this window...
    factor_holding_minutes: int          # ...and held for the following one (no look-ahead)
    factor_momentum_minutes: tuple[int, ...]  # trailing horizons summed for the momentum signal
    # orchestration (Airflow task defaults)
    task_retries: int                    # at least 2 (style guide)
    retry_delay_s: int                   # first retry delay; doubles each attempt up to max_retry_delay_s
    max_retry_delay_s: int
    task_timeout_min: int                # execution_timeout of every task
    eod_deadline_hours: int              # DeadlineAlert this long after the daily interval's end; 0 = none
    api_pool_slots: int                  # concurrent API tasks; each paces at rate_limit_rps / slots
    # local web UIs
    airflow_port: int                    # `make airflow`: the Airflow UI and its execution API
    docs_port: int                       # `make docs`: the dbt docs site (8081 is the Celery check's API server)
    # alerts
    alert_webhook_url: str | None
    alert_email_to: str | None
    alert_ack_step: float = 0.1          # an acknowledged breach alerts again once its utilisation rises this much
    # live market data (`python -m etl stream` / `insights`, docs/streaming.md)
    coinbase_ws_url: str = COINBASE_WS_URL  # the Advanced Trade WebSocket feed or the simulator's
    simulator_ws_port: int = 8766            # the simulator's WebSocket port (default: SIMULATOR_PORT + 1)
    stream_commit_s: float = 2.0             # bronze micro-batch interval: at most this much is lost on a crash
    stream_stall_s: float = 5.0              # no message (not even a heartbeat) this long -> reconnect
    stream_max_message_bytes: int = STREAM_MAX_MESSAGE_BYTES  # a larger one closes the connection (1009), reopened
    stream_book_depth: int = 50              # order-book levels per side in each bronze snapshot
    stream_book_snapshot_s: float = 5.0      # order-book snapshot interval (bronze/order_book)
    bars_source: str = "candles"             # 5-minute bars for the risk chain: "candles" or "trades"
    extra: dict = field(default_factory=dict)
    # risk depth: filtered VaR, ES backtests, stress tests (docs/risk_conventions.md)
    garch_workers: int = 1               # processes for the per-asset GARCH fits
    risk_shards: int = 1                 # the EOD DAG computes the portfolios in this many shards (docs/orchestration.md)
    risk_shard_portfolios: int = 0       # or: portfolios per shard (> 0 wins over risk_shards)
    garch_refit_days: int = 50           # the backtest refits GARCH on the data known every this many days
    es_simulations: int = 1000           # Acerbi-Szekely Z2 p-value: paths simulated under each model
    es_bootstrap: int = 1000             # McNeil-Frey exceedance-residual test: bootstrap resamples
    es_seed: int = 11
    stress_scenarios_file: str | None = None   # stress scenario config (CSV); None = only the worst windows
    lvar_percentile: float = 99.0        # LVaR: percentile of the day's spreads and impact costs (etl/risk/liquidity.py)
    intraday_max_price_age_s: float = 3600.0  # cockpit: an intraday book valued on older prices is flagged stale
    # warehouse: a second load/dbt build waits this long for the running one, then fails naming it
    warehouse_lock_timeout_s: float = 600.0
    # long-running operation (docs/bronze.md "Compaction", docs/silver.md "One writer")
    daily_overlap_days: int = 3          # end of day re-fetches this many daily candles before the newest it has
    silver_workers: int = 1              # processes rebuilding silver's (product, year) chunks
    lake_retention_days: float = 90      # lake tables keep this much history (time travel, `risk --reproduce`)
    lake_storage_options: dict[str, str] = field(default_factory=dict)  # an object store's options (etl/lake.py)
    bind_host: str = "127.0.0.1"         # address the local Airflow UI and the docs site listen on

    @property
    def is_local_data(self) -> bool:
        return "://" not in self.data_dir or self.data_dir.startswith("file://")

    def source_urls(self, source: str | None = None) -> tuple[str, str]:
        """(REST base URL, WebSocket feed URL) of a market-data source (default: the configured one). "simulator"
        is the configured pair; "coinbase" is the public Exchange and Advanced Trade pair, or the configured one
        when the settings themselves select coinbase (e.g. a proxy in front of it)."""
        source = (source or self.source).lower()
        if source == "simulator" or (source == "coinbase" and self.source == "coinbase"):
            return self.coinbase_api_url, self.coinbase_ws_url
        if source == "coinbase":
            return COINBASE_URL, COINBASE_WS_URL
        raise ConfigError(f"unknown source {source!r}: expected 'simulator' or 'coinbase' (--source / PIPELINE_SOURCE)")


def get_settings() -> Settings:
    state_dir = Path(_env("PIPELINE_STATE_DIR", str(PROJECT_ROOT / ".state"))).resolve()
    source = _env("PIPELINE_SOURCE", "simulator").lower()
    if source not in ("simulator", "coinbase"):
        raise ValueError(f"PIPELINE_SOURCE={source!r}: expected 'simulator' or 'coinbase'")
    port = _int("SIMULATOR_PORT", 8765)
    default_url = f"http://127.0.0.1:{port}" if source == "simulator" else COINBASE_URL
    return Settings(
        state_dir=state_dir,
        data_dir=_env("PIPELINE_DATA_DIR", str(state_dir / "data")),
        database_url=_env("PIPELINE_DATABASE_URL", "") or None,
        reporting_password=_lookup("PIPELINE_REPORTING_PASSWORD") or None,
        dbt_target=_env("PIPELINE_DBT_TARGET", "dev"),
        reference_dir=Path(_env("PIPELINE_REFERENCE_DIR", str(PROJECT_ROOT / "etl" / "reference_data"))),
        source=source,
        coinbase_api_url=_env("COINBASE_API_URL", default_url).rstrip("/"),
        products=tuple(parse_products(_env("PIPELINE_PRODUCTS", ""))),
        granularity=_int("PIPELINE_GRANULARITY", 60),
        simulator_port=port,
        simulator_seed=_int("SIMULATOR_SEED", 42),
        simulator_fail_rate=_float("SIMULATOR_FAIL_RATE", 0.0),
        simulator_rate_limit_rps=_float("SIMULATOR_RATE_LIMIT_RPS", 10.0),
        simulator_burst=_int("SIMULATOR_BURST", 15),
        simulator_latency_ms=_float("SIMULATOR_LATENCY_MS", 0.0),
        simulator_malformed_rate=_float("SIMULATOR_MALFORMED_RATE", 0.0),
        simulator_late_corrections=_env("SIMULATOR_LATE_CORRECTIONS", "0").lower() in ("1", "true", "yes"),
        simulator_universe=_int("SIMULATOR_UNIVERSE", 0),
        rate_limit_rps=_float("PIPELINE_RATE_LIMIT_RPS", 10.0),
        rate_limit_burst=_int("PIPELINE_RATE_LIMIT_BURST", 15),
        max_workers=_int("PIPELINE_MAX_WORKERS", 8),
        http_timeout_connect_s=_float("PIPELINE_HTTP_CONNECT_TIMEOUT_S", 5.0),
        http_timeout_read_s=_float("PIPELINE_HTTP_READ_TIMEOUT_S", 30.0),
        max_wait_s=_float("PIPELINE_MAX_WAIT_S", 120.0),
        backoff_initial_s=_float("PIPELINE_BACKOFF_INITIAL_S", 0.2),
        backoff_max_s=_float("PIPELINE_BACKOFF_MAX_S", 10.0),
        throttle_max_wait_s=_float("PIPELINE_THROTTLE_MAX_WAIT_S", 300.0),
        history_days=_int("PIPELINE_HISTORY_DAYS", 3),
        daily_history_days=_int("PIPELINE_DAILY_HISTORY_DAYS", 400),
        overlap_minutes=_int("PIPELINE_OVERLAP_MINUTES", 15),
        progress_interval_s=_float("PIPELINE_PROGRESS_INTERVAL_S", 10.0),
        annualization_days=_int("RISK_ANNUALIZATION_DAYS", 365),
        var_lookback_days=_int("RISK_VAR_LOOKBACK_DAYS", 250),
        ewma_lambda=_float("RISK_EWMA_LAMBDA", 0.94),
        mc_scenarios=_int("RISK_MC_SCENARIOS", 10_000),
        mc_seed=_int("RISK_MC_SEED", 7),
        mc_distribution=_env("RISK_MC_DISTRIBUTION", "t").lower(),
        mc_t_dof=_float("RISK_MC_T_DOF", 5.0),
        anomaly_window=_int("RISK_ANOMALY_WINDOW", 60),
        anomaly_threshold=_float("RISK_ANOMALY_THRESHOLD", 3.5),
        backtest_days=_int("RISK_BACKTEST_DAYS", 250),
        max_carried_days=_int("RISK_MAX_CARRIED_DAYS", 5),
        max_unchanged_closes=_int("RISK_MAX_UNCHANGED_CLOSES", 3),
        factor_window=_int("FACTOR_WINDOW", 1440),
        factor_min_obs=_int("FACTOR_MIN_OBS", 60),
        factor_frequency_s=_int("FACTOR_FREQUENCY_S", 60),
        factor_formation_minutes=_int("FACTOR_FORMATION_MINUTES", 1440),
        factor_holding_minutes=_int("FACTOR_HOLDING_MINUTES", 1440),
        factor_momentum_minutes=_int_list("FACTOR_MOMENTUM_MINUTES", "60,120,180,360,720"),
        task_retries=max(2, _int("PIPELINE_TASK_RETRIES", 2)),
        retry_delay_s=_int("PIPELINE_RETRY_DELAY_S", 30),
        max_retry_delay_s=_int("PIPELINE_MAX_RETRY_DELAY_S", 600),
        task_timeout_min=_int("PIPELINE_TASK_TIMEOUT_MIN", 30),
        eod_deadline_hours=_int("PIPELINE_EOD_DEADLINE_HOURS", 6),
        api_pool_slots=max(1, _int("PIPELINE_API_POOL_SLOTS", 2)),
        airflow_port=_int("PIPELINE_AIRFLOW_PORT", 8080),
        docs_port=_int("PIPELINE_DOCS_PORT", 8090),
        alert_webhook_url=_env("ALERT_WEBHOOK_URL", "") or None,
        alert_email_to=_env("ALERT_EMAIL_TO", "") or None,
        alert_ack_step=_float("ALERT_ACK_STEP", 0.1),
        garch_workers=max(1, _int("RISK_GARCH_WORKERS", 1)),
        risk_shards=max(1, _int("PIPELINE_RISK_SHARDS", 1)),
        risk_shard_portfolios=max(0, _int("PIPELINE_RISK_SHARD_PORTFOLIOS", 0)),
        garch_refit_days=max(1, _int("RISK_GARCH_REFIT_DAYS", 50)),
        es_simulations=max(1, _int("RISK_ES_SIMULATIONS", 1000)),
        es_bootstrap=max(1, _int("RISK_ES_BOOTSTRAP", 1000)),
        es_seed=_int("RISK_ES_SEED", 11),
        stress_scenarios_file=_env("RISK_STRESS_SCENARIOS", str(PROJECT_ROOT / "etl" / "reference_data"
                                                                / "stress_scenarios.csv")),
        intraday_max_price_age_s=_in_range("RISK_INTRADAY_MAX_PRICE_AGE_S", 3600.0, 0),
        lvar_percentile=_in_range("RISK_LVAR_PERCENTILE", 99.0, 0, 100),
        **_stream_settings(source, port),
        warehouse_lock_timeout_s=_float("PIPELINE_WAREHOUSE_LOCK_TIMEOUT_S", 600.0),
        daily_overlap_days=max(1, _int("PIPELINE_DAILY_OVERLAP_DAYS", 3)),
        silver_workers=max(1, _int("PIPELINE_SILVER_WORKERS", os.cpu_count() or 1)),
        lake_retention_days=_in_range("PIPELINE_LAKE_RETENTION_DAYS", 90.0, 0),
        lake_storage_options=_lake_storage_options(),
        bind_host=_env("PIPELINE_BIND_HOST", "127.0.0.1"),
    )


def _lake_storage_options() -> dict[str, str]:
    """delta-rs' object-store options from the standard AWS variables (pyarrow reads the same ones itself): the
    endpoint of an S3-compatible server (plain HTTP allowed when it is http://), credentials, region."""
    names = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
             "AWS_DEFAULT_REGION")
    options = {name: value for name in names if (value := _lookup(name))}
    if region := options.pop("AWS_DEFAULT_REGION", None):
        options.setdefault("AWS_REGION", region)
    if options.get("AWS_ENDPOINT_URL", "").startswith("http://"):
        options["AWS_ALLOW_HTTP"] = "true"
    return options


def _stream_settings(source: str, port: int) -> dict:
    ws_port = _int("SIMULATOR_WS_PORT", port + 1)
    default_ws = f"ws://127.0.0.1:{ws_port}" if source == "simulator" else COINBASE_WS_URL
    bars_source = _env("PIPELINE_BARS_SOURCE", "candles").lower()
    if bars_source not in ("candles", "trades"):
        raise ValueError(f"PIPELINE_BARS_SOURCE={bars_source!r}: expected 'candles' or 'trades'")
    return {
        "coinbase_ws_url": _env("COINBASE_WS_URL", default_ws).rstrip("/"),
        "simulator_ws_port": ws_port,
        "stream_commit_s": _float("PIPELINE_STREAM_COMMIT_S", 2.0),
        "stream_stall_s": _float("PIPELINE_STREAM_STALL_S", 5.0),
        "stream_max_message_bytes": max(1024, _int("PIPELINE_STREAM_MAX_MESSAGE_BYTES", STREAM_MAX_MESSAGE_BYTES)),
        "stream_book_depth": max(1, _int("PIPELINE_STREAM_BOOK_DEPTH", 50)),
        "stream_book_snapshot_s": _float("PIPELINE_STREAM_BOOK_SNAPSHOT_S", 5.0),
        "bars_source": bars_source,
    }
