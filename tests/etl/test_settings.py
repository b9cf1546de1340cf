"""etl/settings.py: defaults, the `.env` file and its precedence (environment > .env > default), as the CLI and
the Makefile see them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from etl import settings as settings_module
from etl.settings import DEFAULT_PRODUCTS, PROJECT_ROOT, get_settings, read_env_file

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
    assert s.history_days == 2  # empty in the file: the default


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
    assert (s.products, s.airflow_port, s.docs_port) == (DEFAULT_PRODUCTS, 8080, 8090)
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
