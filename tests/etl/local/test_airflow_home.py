"""The local Airflow environment (etl/local/airflow_home.py): where its UI listens. That the api-server then listens
there only is checked on a real one by tests/etl/test_permissions.py."""

from __future__ import annotations

from etl.local.airflow_home import airflow_env
from etl.settings import get_settings


def test_the_ui_listens_on_the_bind_host_and_tasks_reach_it_there(monkeypatch, tmp_path):
    monkeypatch.setenv("PIPELINE_ENV_FILE", str(tmp_path / "none.env"))
    monkeypatch.setenv("PIPELINE_AIRFLOW_PORT", "18080")
    monkeypatch.delenv("PIPELINE_BIND_HOST", raising=False)
    env = airflow_env(get_settings(), home=tmp_path)
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"  # not Airflow's default 0.0.0.0
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
    monkeypatch.setenv("PIPELINE_BIND_HOST", "0.0.0.0")  # every network: tasks still use loopback
    env = airflow_env(get_settings(), home=tmp_path)
    assert env["AIRFLOW__API__HOST"] == "0.0.0.0"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
    monkeypatch.setenv("PIPELINE_BIND_HOST", "10.1.2.3")
    assert airflow_env(get_settings(), home=tmp_path)["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == \
        "http://10.1.2.3:18080/execution/"
