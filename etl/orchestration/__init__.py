"""Orchestration: what the DAGs run and how, without Airflow."""
