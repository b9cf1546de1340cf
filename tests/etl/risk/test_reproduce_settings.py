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


def test_reproduce_does_not_read_a_table_the_run_found_absent(chain, tmp_path):
    """The run found no `silver/liquidity_5m` (no order books streamed): Lake.files returns None without note_read
    (lake.py:172-174), so `inputs` does not say "absent" and `pinned` cannot pin it. Once a liquidity build has
    committed a book for the day, reproduce reads it and adds an LVaR the run never computed."""
    import pandas as pd

    from etl.lake import Lake
    from etl.silver import increments
    from etl.silver.liquidity import LIQUIDITY_DIR, LIQUIDITY_SCHEMA, _table

    store = Store.from_uri(str(chain["data"]))
    record = commits.read_manifest(store, commits.risk_manifest(AS_OF.date()))
    assert record["files"][f"liquidity_risk/as_of_date={AS_OF.date()}"]["rows"] == 0
    start = pd.Timestamp(AS_OF.date(), tz="UTC").value // 1000
    book = {"bid_prices": [100.0, 99.0], "bid_quantities": [1.0, 2.0], "ask_prices": [101.0, 102.0],
            "ask_quantities": [1.0, 2.0]}
    rows = pd.DataFrame([{"bucket_start_us": start, "n_snapshots": 1, "mid": 100.5, "spread_bps": 10.0,
                          **{c: 1.0 for c in ("bid_depth_10bp", "bid_depth_50bp", "bid_depth_100bp",
                                              "ask_depth_10bp", "ask_depth_50bp", "ask_depth_100bp")},
                          "reach_bps": 100.0, **book}])
    increments.commit(store, Lake.of(store), LIQUIDITY_DIR, LIQUIDITY_SCHEMA,
                      {("BTC-USD", AS_OF.date().isoformat()): _table(rows)}, None)
    assert cli.main(["risk", "--as-of", str(AS_OF.date()), "--reproduce", record["run_id"],
                     "--output", str(tmp_path / "again")]) == 0
    again = pq.read_table(tmp_path / "again" / "liquidity_risk.parquet")
    assert again.num_rows == 0, f"reproduced liquidity_risk has {again.num_rows} rows; the run committed 0"
