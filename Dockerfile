# The Airflow image for docker-compose.yml: the official Airflow 3.3.2 image (Celery provider and Redis client
# included) plus this project's requirements and code. Build: docker compose build
FROM apache/airflow:3.3.2-python3.11

USER root
# libpq for psycopg2 at runtime; nothing else: dbt runs from the venv-free site-packages below
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends libpq5 && rm -rf /var/lib/apt/lists/*
RUN mkdir -p /opt/pipeline /data /state && chown -R airflow:0 /opt/pipeline /data /state
USER airflow

WORKDIR /opt/pipeline
COPY --chown=airflow:0 requirements.txt /opt/pipeline/requirements.txt
# apache-airflow stays at the image's version: installing our pins next to it must not move it
RUN pip install --no-cache-dir "apache-airflow==3.3.2" -r /opt/pipeline/requirements.txt

COPY --chown=airflow:0 etl /opt/pipeline/etl
COPY --chown=airflow:0 dags /opt/pipeline/dags
COPY --chown=airflow:0 plugins /opt/pipeline/plugins
COPY --chown=airflow:0 dbt_project /opt/pipeline/dbt_project
COPY --chown=airflow:0 sql /opt/pipeline/sql
COPY --chown=airflow:0 pyproject.toml /opt/pipeline/pyproject.toml
# the project itself, editable (as `make venv` installs it): `etl` imports everywhere, its paths stay /opt/pipeline
RUN pip install --no-cache-dir --no-deps -e /opt/pipeline

ENV PIPELINE_DATA_DIR=/data \
    PIPELINE_STATE_DIR=/state \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/pipeline/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/pipeline/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False
