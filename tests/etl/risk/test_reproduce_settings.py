"""Review: `risk --reproduce` (etl/risk/reproduce.py) recomputes with today's settings where the run's record does not
carry them. Fails on the code it was written against."""

from __future__ import annotations

import pyarrow.parquet as pq

from etl import cli, commits
from etl.storage import Store
from tests.etl.risk.conftest import AS_OF


def test_reproduce_reads_the_history_window_the_run_read_not_todays_setting(chain, tmp_path, monkeypatch):
    """docs/lake.md: reproduce recomputes "from the table versions it read ..., its recorded parameters and the same
    reference files ... equal to what the run committed". `load_inputs` picks the daily bars by
    PIPELINE_DAILY_HISTORY_DAYS (runner.py:112,126), which `params` (RiskParams) does not record: a changed setting
    silently changes the recomputed run (no refusal, no warning)."""
    store = Store.from_uri(str(chain["data"]))
    record = commits.read_manifest(store, commits.risk_manifest(AS_OF.date()))
    monkeypatch.setenv("PIPELINE_DAILY_HISTORY_DAYS", "20")      # was 35 when the run ran (conftest.chain)
    code = cli.main(["risk", "--as-of", str(AS_OF.date()), "--reproduce", record["run_id"],
                     "--output", str(tmp_path / "again")])
    assert code == 0
    differ = [entry["table"] for entry in record["files"].values()
              if not pq.read_table(tmp_path / "again" / f"{entry['table']}.parquet").equals(
                  commits.read_entry(store, entry))]
    assert differ == [], f"reproduced tables that differ from what run {record['run_id']} committed: {differ}"
