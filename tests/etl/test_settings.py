"""etl/settings.py: defaults, the `.env` file and its precedence (environment > .env > default), as the CLI and
the Makefile see them; defaults derived from other settings, parsing, floors and the errors of bad values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from etl import settings as settings_module
from etl.settings import (
    COINBASE_URL,
    COINBASE_WS_URL,
    DEFAULT_PRODUCTS,
    PROJECT_ROOT,
    get_settings,
    parse_products,
    read_env_file,
)

DOTENV = """\
# a comment, then a blank line

PIPELINE_PRODUCTS=SOL-USD,ETH-USD
export PIPELINE_AIRFLOW_PORT=9191
PIPELINE_DOCS_PORT="9292"
PIPELINE_DATABASE_URL='postgresql://u:p@db.example:5432/warehouse'
RISK_MC_SEED=11 # the seed of the Monte Carlo VaR
PIPELINE_HISTORY_DAYS=
not a setting line
"""


@pytest.fixture
def dotenv(tmp_path, monkeypatch):
    path = tmp_path / ".env"
    path.write_text(DOTENV)
    monkeypatch.setenv("PIPELINE_ENV_FILE", str(path))
    for name in ("PIPELINE_PRODUCTS", "PIPELINE_AIRFLOW_PORT", "PIPELINE_DOCS_PORT", "PIPELINE_DATABASE_URL",
                 "RISK_MC_SEED", "PIPELINE_HISTORY_DAYS"):
        monkeypatch.delenv(name, raising=False)
    return path


def test_the_env_file_format(dotenv):
    assert read_env_file(dotenv) == {
        "PIPELINE_PRODUCTS": "SOL-USD,ETH-USD", "PIPELINE_AIRFLOW_PORT": "9191", "PIPELINE_DOCS_PORT": "9292",
        "PIPELINE_DATABASE_URL": "postgresql://u:p@db.example:5432/warehouse", "RISK_MC_SEED": "11",
        "PIPELINE_HISTORY_DAYS": ""}
    assert read_env_file(dotenv.parent / "missing.env") == {}


def test_the_file_fills_what_the_environment_does_not_set(dotenv):
    s = get_settings()
    assert s.products == ("SOL-USD", "ETH-USD")
    assert (s.airflow_port, s.docs_port, s.mc_seed) == (9191, 9292, 11)
    assert s.database_url == "postgresql://u:p@db.example:5432/warehouse"
    assert s.history_days == 3  # empty in the file: the default


def test_the_environment_wins_over_the_file(dotenv, monkeypatch):
    monkeypatch.setenv("PIPELINE_PRODUCTS", "BTC-USD")
    monkeypatch.setenv("PIPELINE_AIRFLOW_PORT", "8181")
    monkeypatch.setenv("PIPELINE_DATABASE_URL", "")  # set, even empty: the embedded server, not the file's URL
    s = get_settings()
    assert (s.products, s.airflow_port, s.database_url) == (("BTC-USD",), 8181, None)
    assert s.docs_port == 9292  # still from the file


def test_a_changed_file_is_read_again(dotenv):
    assert get_settings().mc_seed == 11
    dotenv.write_text("RISK_MC_SEED=12345\n")
    os.utime(dotenv, ns=(1, 1))  # a different mtime even within the file system's timestamp granularity
    assert get_settings().mc_seed == 12345


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_ENV_FILE", str(tmp_path / "none.env"))
    for name in ("PIPELINE_PRODUCTS", "PIPELINE_AIRFLOW_PORT", "PIPELINE_DOCS_PORT"):
        monkeypatch.delenv(name, raising=False)
    s = get_settings()
    assert (s.products, s.airflow_port, s.docs_port) == ((), 8080, 8090)
    # no PIPELINE_PRODUCTS: what the sample book holds (its 12 USD products and ETH-BTC, converted with BTC-USD)
    from etl.reference_set import Reference

    assert set(Reference(s).products_to_ingest()) == set(DEFAULT_PRODUCTS) | {"ETH-BTC"}
    monkeypatch.delenv("PIPELINE_ENV_FILE")
    assert settings_module.env_file() == PROJECT_ROOT / ".env"


def test_a_bad_value_in_the_file_names_the_setting(dotenv):
    dotenv.write_text("PIPELINE_AIRFLOW_PORT=eighty\n")
    with pytest.raises(ValueError, match="PIPELINE_AIRFLOW_PORT='eighty' is not a whole number"):
        get_settings()


def test_every_setting_is_in_env_example():
    """.env.example lists every name settings reads (copy it to .env to start)."""
    import re

    names = set(re.findall(r'_(?:env|int|float|int_list|lookup)\("([A-Z_]+)"', (PROJECT_ROOT / "etl" / "settings.py")
                           .read_text()))
    listed = set(re.findall(r"^([A-Z_]+)=", (PROJECT_ROOT / ".env.example").read_text(), re.M))
    assert {"PIPELINE_AIRFLOW_PORT", "PIPELINE_DOCS_PORT"} <= names
    assert names - listed == set()


# ---- the CLI and the Makefile read the same file ---------------------------------------------------------------
def test_the_cli_reads_the_env_file_and_the_environment_wins(dotenv):
    env = {k: v for k, v in os.environ.items() if k != "PIPELINE_DATABASE_URL"}
    run = [sys.executable, "-m", "etl", "db", "url"]
    out = subprocess.run(run, env=env, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "postgresql://u:p@db.example:5432/warehouse"
    env["PIPELINE_DATABASE_URL"] = "postgresql://other@elsewhere/db"
    out = subprocess.run(run, env=env, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60)
    assert out.stdout.strip() == "postgresql://other@elsewhere/db"


def test_the_makefile_reads_the_env_file_and_the_environment_wins(dotenv):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_AIRFLOW", "PIPELINE_DOCS", "MAKE"))}

    def help_text(**extra: str) -> str:
        out = subprocess.run(["make", "-s", "help", f"PIPELINE_ENV_FILE={dotenv}"], env={**env, **extra},
                             capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    text = help_text()
    assert "http://localhost:9191" in text and "http://localhost:9292" in text
    text = help_text(PIPELINE_AIRFLOW_PORT="7070")
    assert "http://localhost:7070" in text and "http://localhost:9292" in text
    out = subprocess.run(["make", "-s", "-n", "airflow-check", f"PIPELINE_ENV_FILE={dotenv}"], env=env,
                         capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60)
    assert "http://localhost:9191/dags" in out.stdout


# ---- values, defaults that depend on other settings, and the rules -----------------------------------------------
@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No .env file and none of the settings below set: the defaults."""
    monkeypatch.setenv("PIPELINE_ENV_FILE", str(tmp_path / "none.env"))
    for name in ("PIPELINE_SOURCE", "SIMULATOR_PORT", "SIMULATOR_WS_PORT", "COINBASE_API_URL", "COINBASE_WS_URL",
                 "PIPELINE_DATA_DIR", "PIPELINE_STATE_DIR", "PIPELINE_DATABASE_URL", "PIPELINE_REFERENCE_DIR",
                 "PIPELINE_PRODUCTS", "PIPELINE_TASK_RETRIES", "PIPELINE_API_POOL_SLOTS", "PIPELINE_BARS_SOURCE",
                 "FACTOR_MOMENTUM_MINUTES", "SIMULATOR_LATE_CORRECTIONS", "PIPELINE_REPORTING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_local_defaults_live_under_the_project(clean_env):
    s = get_settings()
    assert s.state_dir == PROJECT_ROOT / ".state" and s.data_dir == str(PROJECT_ROOT / ".state" / "data")
    assert s.database_url is None and s.reporting_password is None and s.is_local_data
    assert s.reference_dir == PROJECT_ROOT / "etl" / "reference_data"
    assert (s.source, s.coinbase_api_url, s.coinbase_ws_url) == ("simulator", "http://127.0.0.1:8765",
                                                                 "ws://127.0.0.1:8766")
    clean_env.setenv("PIPELINE_STATE_DIR", "relative/state")
    assert get_settings().data_dir == str(Path("relative/state").resolve() / "data")


def test_the_source_picks_the_urls_and_the_simulator_port_its_websocket(clean_env):
    clean_env.setenv("SIMULATOR_PORT", "9000")
    s = get_settings()
    assert (s.coinbase_api_url, s.coinbase_ws_url, s.simulator_ws_port) == ("http://127.0.0.1:9000",
                                                                            "ws://127.0.0.1:9001", 9001)
    clean_env.setenv("PIPELINE_SOURCE", " Coinbase ")
    s = get_settings()
    assert (s.source, s.coinbase_api_url, s.coinbase_ws_url) == ("coinbase", COINBASE_URL, COINBASE_WS_URL)
    clean_env.setenv("COINBASE_API_URL", "http://sim.internal:8765/")  # a trailing slash is dropped
    assert get_settings().coinbase_api_url == "http://sim.internal:8765"


@pytest.mark.parametrize(("name", "value", "message"), [
    ("PIPELINE_SOURCE", "ftp", "PIPELINE_SOURCE='ftp': expected 'simulator' or 'coinbase'"),
    ("PIPELINE_BARS_SOURCE", "ticks", "PIPELINE_BARS_SOURCE='ticks': expected 'candles' or 'trades'"),
    ("RISK_EWMA_LAMBDA", "high", "setting RISK_EWMA_LAMBDA='high' is not a number"),
    ("PIPELINE_HISTORY_DAYS", "2.5", "setting PIPELINE_HISTORY_DAYS='2.5' is not a whole number"),
    ("FACTOR_MOMENTUM_MINUTES", "60,two", "setting FACTOR_MOMENTUM_MINUTES='60,two' is not a comma list of whole "
                                          "numbers"),
    # refused, not clamped: a retention of -1 read as 0 vacuumed all the history `risk --reproduce` needs
    ("PIPELINE_LAKE_RETENTION_DAYS", "-1", "setting PIPELINE_LAKE_RETENTION_DAYS='-1' is out of range: expected >= 0"),
    ("RISK_LVAR_PERCENTILE", "150", "setting RISK_LVAR_PERCENTILE='150' is out of range: expected between 0 and 100"),
    ("RISK_INTRADAY_MAX_PRICE_AGE_S", "-5", "setting RISK_INTRADAY_MAX_PRICE_AGE_S='-5' is out of range: "
                                            "expected >= 0"),
])
def test_a_bad_value_names_the_setting_and_what_it_expects(clean_env, name, value, message):
    clean_env.setenv(name, value)
    with pytest.raises(ValueError) as err:
        get_settings()
    assert str(err.value) == message


def test_values_are_parsed_and_floors_applied(clean_env):
    for name, value in {"PIPELINE_PRODUCTS": " btc-usd, ,eth-btc ,", "FACTOR_MOMENTUM_MINUTES": "30, 60,",
                        "SIMULATOR_LATE_CORRECTIONS": "yes", "PIPELINE_TASK_RETRIES": "0",
                        "PIPELINE_API_POOL_SLOTS": "0", "PIPELINE_BARS_SOURCE": "TRADES",
                        "PIPELINE_REPORTING_PASSWORD": "s3cret", "PIPELINE_DATABASE_URL": "  "}.items():
        clean_env.setenv(name, value)
    s = get_settings()
    assert s.products == ("BTC-USD", "ETH-BTC") and s.factor_momentum_minutes == (30, 60)
    assert s.simulator_late_corrections and s.bars_source == "trades" and s.reporting_password == "s3cret"
    assert (s.task_retries, s.api_pool_slots) == (2, 1)  # at least 2 retries (style guide), at least one API slot
    assert s.database_url is None  # blank: the embedded Postgres


@pytest.mark.parametrize(("uri", "local"), [("/data", True), ("file:///data", True), ("s3://bucket/data", False),
                                                 ("gs://bucket/data", False)])
def test_is_local_data(clean_env, uri, local):
    clean_env.setenv("PIPELINE_DATA_DIR", uri)
    assert get_settings().is_local_data is local


def test_parse_products():
    assert parse_products("btc-usd, ETH-USD ,,sol-usd") == ["BTC-USD", "ETH-USD", "SOL-USD"]
    assert parse_products(["eth-btc", " ", ""]) == ["ETH-BTC"]
    assert parse_products(" , ") == []


def test_source_urls_pick_the_rest_and_websocket_pair_of_a_source(clean_env):
    from etl.errors import ConfigError

    clean_env.setenv("COINBASE_API_URL", "http://127.0.0.1:9999")
    s = get_settings()  # the simulator is configured
    assert s.source_urls() == s.source_urls("simulator") == ("http://127.0.0.1:9999", "ws://127.0.0.1:8766")
    assert s.source_urls("Coinbase") == (COINBASE_URL, COINBASE_WS_URL)  # --source coinbase: the public API
    clean_env.setenv("PIPELINE_SOURCE", "coinbase")
    clean_env.setenv("COINBASE_WS_URL", "wss://proxy.internal/ws")
    assert get_settings().source_urls("coinbase") == ("http://127.0.0.1:9999", "wss://proxy.internal/ws")  # a proxy
    with pytest.raises(ConfigError, match="unknown source 'kraken': expected 'simulator' or 'coinbase'"):
        s.source_urls("kraken")
