"""The risk cockpit as an Airflow 3 plugin: a FastAPI app on the API server at /risk, "Risk" in the UI's
navigation, and a "Risk report" link on every DAG run (the report that run wrote).

The app itself is plugins/risk_cockpit/app.py (pages and JSON; every route behind Airflow's authentication);
its data comes from etl/report/cockpit.py. See docs/cockpit.md.

Every Airflow process loads the plugins folder, task processes too (for macros): so this module imports
nothing heavy, and the app is imported the first time `fastapi_apps` is read, i.e. by the API server only.
"""

from __future__ import annotations

from airflow.sdk.plugins_manager import AirflowPlugin


class _CockpitApp:
    """`fastapi_apps`, built on first read."""

    def __get__(self, obj, owner) -> list[dict]:
        from risk_cockpit.app import app

        return [{"app": app, "url_prefix": "/risk", "name": "Risk cockpit"}]


class RiskCockpitPlugin(AirflowPlugin):
    name = "risk_cockpit"
    fastapi_apps = _CockpitApp()
    external_views = [
        {"name": "Risk", "href": "/risk/", "destination": "nav", "url_route": "risk", "nav_top_level": True,
         "icon": "/risk/static/icon.svg"},
        {"name": "Risk report", "href": "/risk/run/{DAG_ID}/{RUN_ID}", "destination": "dag_run",
         "url_route": "risk-report"},
    ]
