"""Local runtime helpers: run the pipeline through Airflow on this machine, one module per runner.

- `airflow_home`: the Airflow home and environment every local Airflow command runs with
- `simulator_process`: the exchange simulator as a background process (or the configured API)
- `demo` (`make demo`), `standalone` (`make airflow`), `celery` (`make celery`): the runners, each `python -m`

Not part of the pipeline: no module of `etl` outside this package imports it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from etl import permissions
from etl.errors import PipelineError
from etl.settings import Settings, get_settings


def run_main(run: Callable[[Settings], int], prog: str, doc: str | None, argv: list[str] | None = None) -> int:
    """A runner's command line: `--help` from its docstring, logging, and exit 2 with one line on bad setup."""
    argparse.ArgumentParser(prog=prog, description=(doc or "").splitlines()[0]).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    permissions.owner_only()  # inherited by every Airflow process: login file, metadata DB, logs, task outputs
    try:
        return run(get_settings())
    except KeyboardInterrupt:
        return 130
    except (PipelineError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
