"""docker-compose.yml and the Dockerfile, checked statically (no Docker engine here).

The file parses; it has every service the deployment needs; every pipeline setting it passes is one that
etl/settings.py (or dags/pipeline_common.py) reads; data and commands are consistent with the code.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_SERVICES = {"airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "airflow-worker"}
SETTING_PREFIXES = ("PIPELINE_", "COINBASE_", "SIMULATOR_", "RISK_", "FACTOR_", "ALERT_")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def known_settings() -> set[str]:
    """Environment names read by etl/settings.py and dags/pipeline_common.py."""
    names = set()
    for path in (ROOT / "etl" / "settings.py", ROOT / "dags" / "pipeline_common.py"):
        names |= set(re.findall(r"""(?:_env|_int|_float|_env_int|_lookup|environ\.get)\(\s*["']([A-Z0-9_]+)["']""",
                                path.read_text()))
    return names


def test_compose_has_every_service(compose):
    services = set(compose["services"])
    assert AIRFLOW_SERVICES | {"postgres", "redis", "simulator"} <= services
    assert compose["services"]["simulator"]["profiles"] == ["simulator"]  # optional
    assert {"pipeline-data", "postgres-data"} <= set(compose["volumes"])


def test_every_pipeline_setting_in_compose_is_read_by_the_code(compose):
    known = known_settings()
    assert {"PIPELINE_DATA_DIR", "PIPELINE_DATABASE_URL", "PIPELINE_SOURCE", "COINBASE_API_URL"} <= known
    for name in AIRFLOW_SERVICES | {"simulator"}:
        env = compose["services"][name]["environment"]
        ours = {k for k in env if k.startswith(SETTING_PREFIXES)}
        assert ours - known == set(), f"{name} sets unknown settings {ours - known}"
        # the contract's deployment settings are all given
        assert {"PIPELINE_DATA_DIR", "PIPELINE_DATABASE_URL", "PIPELINE_SOURCE", "COINBASE_API_URL",
                "PIPELINE_PRODUCTS"} <= ours, name


def test_all_airflow_services_share_the_data_volume_and_celery_config(compose):
    for name in AIRFLOW_SERVICES:
        svc = compose["services"][name]
        env = svc["environment"]
        data_dir = env["PIPELINE_DATA_DIR"]
        mount = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", data_dir)
        assert any(v.startswith("pipeline-data:") and v.split(":")[1] == mount for v in svc["volumes"]), name
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:")
        assert "@postgres:5432/airflow" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert "@postgres:5432/warehouse" in env["PIPELINE_DATABASE_URL"]
        assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/pipeline/dags"
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"


def test_worker_scales(compose):
    worker = compose["services"]["airflow-worker"]
    assert "container_name" not in worker and "ports" not in worker  # --scale airflow-worker=N works
    assert worker["command"] == ["airflow", "celery", "worker"]


def test_commands_are_real_airflow_and_cli_commands(compose):
    from etl.cli import build_parser

    expected = {"airflow-apiserver": ["airflow", "api-server"], "airflow-scheduler": ["airflow", "scheduler"],
                "airflow-dag-processor": ["airflow", "dag-processor"], "airflow-triggerer": ["airflow", "triggerer"]}
    for name, command in expected.items():
        assert compose["services"][name]["command"] == command
    init = " ".join(compose["services"]["airflow-init"]["command"])
    assert "airflow db migrate" in init and "airflow pools set coinbase_api" in init
    sim = compose["services"]["simulator"]["command"]
    assert sim[:3] == ["python", "-m", "etl"]
    args = build_parser().parse_args(sim[3:])  # the simulator flags are the CLI's own
    assert (args.command, args.host, args.port) == ("simulator", "0.0.0.0", 8765)
    assert compose["services"]["simulator"]["environment"]["COINBASE_API_URL"].endswith("http://simulator:8765}")


def test_pool_in_compose_matches_the_dags(compose):
    from etl.orchestration import spec

    init = " ".join(compose["services"]["airflow-init"]["command"])
    assert f"pools set {spec.API_POOL} " in init
    assert f"pools set {spec.SILVER_POOL} {spec.SILVER_POOL_SLOTS} " in init
    assert "PIPELINE_API_POOL_SLOTS" in init


def test_dockerfile_ships_the_code_where_compose_expects_it():
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM apache/airflow:3.3.2" in text
    for folder in ("etl", "dags", "plugins", "dbt_project"):
        assert f"COPY --chown=airflow:0 {folder} /opt/pipeline/{folder}" in text
    assert "RUN pip install --no-cache-dir --no-deps -e /opt/pipeline" in text  # `etl` importable, no PYTHONPATH
    assert "requirements.txt" in text
    cmd = [line for line in text.splitlines() if line.startswith("RUN pip install")][0]
    assert "apache-airflow==3.3.2" in shlex.split(cmd)[-3]


# ---- the local Airflow configuration of `make demo` / `make airflow` (etl/local/airflow_home.py) ------------
def test_demo_airflow_env_points_airflow_at_this_repo(tmp_path):
    from etl.local import airflow_home
    from etl.settings import get_settings

    env = airflow_home.airflow_env(get_settings(), home=tmp_path / "af", base={"PATH": "/usr/bin"},
                                   database_url="postgresql://u:p@/db?host=/sock")
    assert env["AIRFLOW_HOME"] == str(tmp_path / "af")
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(ROOT / "dags")
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == str(ROOT / "plugins")
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{tmp_path / 'af' / 'airflow.db'}"
    assert 2 <= int(env["AIRFLOW__CORE__PARALLELISM"]) <= 4  # sized for 2 cores
    assert "PYTHONPATH" not in env  # the venv has the project installed (pyproject.toml): nothing edits the path
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)  # standalone spawns `airflow ...`
    import json

    conn = json.loads(env["AIRFLOW_CONN_PIPELINE_WAREHOUSE"])
    assert (conn["conn_type"], conn["host"], conn["login"], conn["schema"]) == ("postgres", "/sock", "u", "db")


def test_demo_dates_are_the_last_complete_intervals():
    from datetime import UTC, datetime

    from etl.local import demo

    intraday, eod = demo.demo_dates(datetime(2026, 3, 2, 12, 7, 30, tzinfo=UTC))
    assert intraday == datetime(2026, 3, 2, 12, 5, tzinfo=UTC)   # `dags test` date = interval end
    assert eod == datetime(2026, 3, 2, 0, 10, tzinfo=UTC)        # interval [03-01 00:10, 03-02 00:10)
    assert demo.demo_dates(datetime(2026, 3, 2, 0, 5, tzinfo=UTC))[1] == datetime(2026, 3, 1, 0, 10, tzinfo=UTC)


def test_small_reference_keeps_only_portfolios_fully_priced_by_the_products(tmp_path):
    import csv

    from tests.support.reference import small_reference

    kept = small_reference(ROOT / "etl" / "reference_data", tmp_path, ["BTC-USD", "ETH-USD"])
    with open(tmp_path / "positions.csv", newline="") as f:
        positions = list(csv.DictReader(f))
    assert kept and {p["portfolio_id"] for p in positions} == set(kept)
    assert {p["product_id"] for p in positions} <= {"BTC-USD", "ETH-USD"}


# ---- deployment defaults (issue 12 item 8) -------------------------------------------------------------------
SECRETS = ("AIRFLOW_JWT_SECRET", "AIRFLOW_FERNET_KEY", "AIRFLOW_DB_PASSWORD", "WAREHOUSE_PASSWORD",
           "PIPELINE_REPORTING_PASSWORD")
INTERNAL_SERVICES = ("postgres", "redis", "simulator")


def test_deployment_has_no_working_default_secret(compose):
    """Every secret is `${VAR:?...}`: compose refuses to start (unset or empty) instead of using a default."""
    text = (ROOT / "docker-compose.yml").read_text()
    for name in SECRETS:
        uses = re.findall(r"\$\{" + name + r"([^}]*)\}", text)
        assert uses, f"{name} is not passed to the deployment"
        for rest in uses:
            assert rest.startswith(":?") and ".env.example" in rest, f"${{{name}{rest}}} has a default"
    assert "change-me" not in text and "POSTGRES_PASSWORD: airflow" not in text
    for svc in compose["services"].values():
        for key, value in (svc.get("environment") or {}).items():
            if any(word in key for word in ("PASSWORD", "SECRET", "FERNET")):
                assert str(value).startswith("${") and ":?" in str(value), key
    env = compose["x-pipeline-env"] if "x-pipeline-env" in compose else {}
    assert ":?" in env.get("PIPELINE_REPORTING_PASSWORD", "")


def test_env_example_says_how_to_generate_each_secret():
    text = (ROOT / ".env.example").read_text()
    for name in SECRETS:
        lines = text.splitlines()
        at = [i for i, line in enumerate(lines) if line.startswith(f"{name}=")]
        assert at, f".env.example does not list {name}"
        comment = "\n".join(lines[max(0, at[-1] - 3):at[-1]])
        assert "python" in comment or "openssl" in comment, f"no generation command above {name}"
    assert "Fernet.generate_key()" in text


def test_postgres_redis_and_simulator_are_on_the_internal_network_only(compose):
    assert compose["networks"]["backend"]["internal"] is True
    for name in INTERNAL_SERVICES:
        svc = compose["services"][name]
        assert "ports" not in svc, f"{name} publishes a port"
        assert svc["networks"] == ["backend"], name
    for name, svc in compose["services"].items():  # whatever is published binds to loopback by default
        for port in svc.get("ports") or []:
            bind = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(port)).split(":")
            assert len(bind) == 3 and bind[0] == "127.0.0.1", f"{name} publishes {port} beyond loopback"
    for name in AIRFLOW_SERVICES:
        assert "backend" in compose["services"][name]["networks"], name
