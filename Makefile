# Two commands on a fresh machine: `make demo` and `make test`. Everything else is optional.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3 || echo python3)
VENV := .venv
BIN := $(VENV)/bin
REQ_HASH := $(shell (cat requirements.txt requirements-dev.txt pyproject.toml; $(PYTHON) --version 2>&1) | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQ_HASH)
# Settings from a .env file at the project root (NAME=value lines, see .env.example): etl/settings.py reads it for
# every command; here only what make itself needs. A variable set in the environment (or on the command line) wins.
PIPELINE_ENV_FILE ?= $(CURDIR)/.env
export PIPELINE_ENV_FILE
env_or_file = $(or $($(1)),$(shell sed -n 's/^[[:space:]]*\(export[[:space:]]\+\)\?$(1)=//p' $(PIPELINE_ENV_FILE) 2>/dev/null | tail -n 1 | sed "s/^[\"']//; s/[\"']$$//"),$(2))
AIRFLOW_PORT := $(call env_or_file,PIPELINE_AIRFLOW_PORT,8080)
DOCS_PORT := $(call env_or_file,PIPELINE_DOCS_PORT,8090)

.PHONY: help venv demo test test-slow bench bench-quick airflow airflow-check celery docs dbt-files lint db-stop clean-state \
	browser psql psql-reporting

help:
	@echo "make demo        run the whole pipeline end to end through Airflow (embedded Postgres + simulator)"
	@echo "make test        run the test suite (real Postgres, real HTTP simulator, dbt), under 15 minutes"
	@echo "make test-slow   the slow end-to-end suites (Airflow, browser, chaos, real-data replays); CI runs both"
	@echo "make bench       run the benchmarks, write bench/results.json (bench-quick: small sizes)"
	@echo "make soak        months of pipeline runs in accelerated time; cost per run must stay flat (soak-quick: < 2 min)"
	@echo "make airflow     airflow standalone with this project's DAGs (UI on http://localhost:$(AIRFLOW_PORT)); Ctrl-C stops it all"
	@echo "                 and the risk cockpit plugin (\"Risk\" in the navigation, /risk/)"
	@echo "make airflow-check  screenshot the running Airflow UI's DAG list in headless Chromium"
	@echo "make celery      the intraday DAG on CeleryExecutor with two local workers (needs redis-server)"
	@echo "make docs        build and serve the dbt docs site (http://localhost:$(DOCS_PORT))"
	@echo "make dbt-files   regenerate the dbt YAML from etl/warehouse/tables.yml and etl/measures.py (CI fails if stale)"
	@echo "make lint        ruff"
	@echo "make psql-reporting [ARGS=...]  psql on the warehouse as the read-only reporting role (psql: as owner)"

# The venv is rebuilt only when requirements*.txt, pyproject.toml (or the interpreter) change: the stamp is keyed on
# their hash. One venv for every target: the development set (requirements-dev.txt = the run-time requirements.txt
# plus test, benchmark and lint tools). The project itself is installed editable (pyproject.toml), so `etl` imports
# without sys.path edits.
venv: $(STAMP)
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info; sys.exit(0 if v[:2] == (3, 11) else "error: Python 3.11 is required, found %d.%d at %s: install python3.11 or run make PYTHON=/path/to/python3.11" % (v[0], v[1], sys.executable))'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@rm -f $(VENV)/.installed-* && touch $@

demo: venv
	$(BIN)/python -m etl.local.demo

# `make test` stays under 15 minutes; the slow end-to-end suites (Airflow, browser, chaos, real-data replays) run
# once in CI after it (.ci/run) or by hand with `make test-slow`. Each prints its 20 slowest tests, to keep an eye on.
test: venv browser
	$(BIN)/python -m pytest -q -ra --durations=20 -m "not slow"

test-slow: venv browser
	$(BIN)/python -m pytest -q -ra --durations=20 -m slow

bench: venv
	$(BIN)/python bench/run.py

bench-quick: venv
	$(BIN)/python bench/run.py --quick

airflow: venv
	$(BIN)/python -m etl.local.standalone

airflow-check: venv browser
	$(BIN)/python -m tests.support.browser_check http://localhost:$(AIRFLOW_PORT)/dags --out .state/test-artifacts/browser --settle 3

celery: venv
	$(BIN)/python -m etl.local.celery

docs: venv
	$(BIN)/python -m etl docs --serve

dbt-files: venv
	$(BIN)/python -m etl.warehouse.dbt_files

lint: venv
	$(BIN)/ruff check .

db-stop: venv
	$(BIN)/python -m etl db stop

# psql on the warehouse, with the venv's python (no activated venv needed) and the embedded server's psql.
# Extra psql arguments: make psql-reporting ARGS="-v as_of=2026-01-31 -f sql/risk_exposure/var_es_by_portfolio.sql"
PSQL = "$$($(BIN)/python -c 'from etl.db import psql_path; print(psql_path())')"
psql: venv
	@$(PSQL) "$$($(BIN)/python -m etl db url)" $(ARGS)

psql-reporting: venv
	@$(PSQL) "$$($(BIN)/python -m etl db url --role reporting)" $(ARGS)

# Headless Chromium for the browser checks of the report and the dbt docs: installed from Debian when we may
# (root with apt-get); otherwise the browser tests skip with a message saying so.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { echo "installing Debian chromium for the browser checks..."; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "chromium could not be installed: browser checks will be skipped"; }; } || \
	  echo "chromium not found and cannot be installed here: browser checks will be skipped"

clean-state: db-stop
	rm -rf .state

# Soak: months of operation in accelerated time against the simulator (bench/bench_soak.py); soak-quick < 2 min.
.PHONY: soak soak-quick
soak: venv
	$(BIN)/python bench/run.py soak

soak-quick: venv
	$(BIN)/python bench/run.py --quick soak
