"""The risk run in shards (etl.risk.shards) through the task functions the end-of-day DAG calls: 3 shards commit
the same tables as 1 and as the unsharded run, a retried shard changes nothing, a missing shard commits nothing."""

from __future__ import annotations

import pandas as pd
import pytest

from etl.commits import read_entry, read_manifest, risk_manifest
from etl.errors import DataNotFoundError
from etl.orchestration import tasks
from etl.risk.runner import TABLES
from etl.risk.shards import shard_count, shard_dir, shard_portfolios
from etl.settings import get_settings
from etl.storage import Store
from tests.etl.risk.test_engine import AS_OF, _closes, _write_silver

# two base currencies, their portfolios interleaved in the sorted ids, so every shard holds a mix of them
PORTFOLIOS = """portfolio_id,name,base_currency,var_limit,concentration_limit,drawdown_limit
U1,Long BTC short ETH,USD,1000,0.9,0.9
B1,ETH in BTC terms,BTC,100,0.9,0.01
U2,ETH-BTC rebalanced,USD,1000000,0.5,0.9
U3,Long ETH,USD,500,0.6,0.2
B2,Long BTC-quoted ETH,BTC,0.5,0.9,0.5
U4,Empty book,USD,1000,0.5,0.5
U5,Three legs,USD,2000,0.7,0.3
"""
POSITIONS = """portfolio_id,product_id,as_of_date,quantity,avg_cost
U1,BTC-USD,2025-06-01,2,50000
U1,ETH-USD,2025-06-01,-30,2500
U2,ETH-BTC,2025-06-01,100,0.04
U2,ETH-BTC,2026-03-10,150,0.045
U2,BTC-USD,2026-03-10,0.5,60000
B1,ETH-USD,2025-06-01,20,2800
U3,ETH-USD,2025-09-01,12,2900
B2,ETH-BTC,2025-06-01,-40,0.05
B2,BTC-USD,2026-02-01,0.3,55000
U5,BTC-USD,2025-06-01,-1,58000
U5,ETH-USD,2026-01-15,8,3100
U5,ETH-BTC,2025-06-01,25,0.045
"""


@pytest.fixture
def shard_env(data_dir, book_reference, monkeypatch):
    book_reference(PORTFOLIOS, POSITIONS)
    for key, value in {"RISK_MC_SCENARIOS": "2000", "RISK_BACKTEST_DAYS": "60", "RISK_VAR_LOOKBACK_DAYS": "60",
                       "PIPELINE_DAILY_HISTORY_DAYS": "150", "RISK_ES_SIMULATIONS": "300",
                       "RISK_ES_BOOTSTRAP": "300"}.items():
        monkeypatch.setenv(key, value)
    _write_silver(data_dir, _closes(), pd.Timestamp(AS_OF, tz="UTC") + pd.Timedelta(hours=13, minutes=5))
    return data_dir


KEYS = ("portfolio_id", "product_id", "method", "confidence", "as_of_date", "scenario_id", "scenario_date",
        "asset_index", "product_id_a", "product_id_b", "entity_id", "limit_type", "bucket_start", "price_date",
        "scope", "base_currency", "factor_name")


def _committed(data_dir) -> dict[str, pd.DataFrame]:
    """Every table the risk manifest of AS_OF commits, rows in key order (shards append the portfolios in another
    order, never other rows)."""
    store = Store.from_uri(str(data_dir))
    manifest = read_manifest(store, risk_manifest(AS_OF))
    out = {}
    for name in TABLES:
        df = read_entry(store, manifest["files"][f"{name}/as_of_date={AS_OF}"]).to_pandas()
        df = df.drop(columns=["risk_run_id"], errors="ignore")
        keys = [k for k in KEYS if k in df.columns]
        out[name] = df.sort_values(keys, ignore_index=True) if keys else df
    return out


def _sharded(monkeypatch, shards: int, run_key: str) -> dict:
    """The DAG's risk tasks in order: plan, every shard, the commit."""
    monkeypatch.setenv("PIPELINE_RISK_SHARDS", str(shards))
    plan = tasks.plan_risk_shards(max_map_length=1024)
    for shard in plan:
        tasks.compute_risk_shard(AS_OF, shard["shard"], shard["shards"], run_key=run_key, inputs=shard["inputs"])
    return tasks.compute_risk(AS_OF, shards=len(plan), run_key=run_key)


def _assert_same(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    assert set(a) == set(b) == set(TABLES)
    # to 1e-12, not exactly: a shard's chunks hold other portfolios, and BLAS products (tensordot, matmul) group a
    # sum differently for another number of columns, so the last bits of a figure may differ
    for name in TABLES:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=False, rtol=1e-12, obj=name)


def test_three_shards_commit_the_same_tables_as_one_and_as_the_unsharded_run(shard_env, monkeypatch):
    unsharded = tasks.compute_risk(AS_OF)
    whole = _committed(shard_env)
    one = _sharded(monkeypatch, 1, "run-one")
    _assert_same(_committed(shard_env), whole)
    three = _sharded(monkeypatch, 3, "run-three")
    _assert_same(_committed(shard_env), whole)
    store = Store.from_uri(str(shard_env))
    read_by_shards = read_manifest(store, risk_manifest(AS_OF))["inputs"]
    tasks.compute_risk(AS_OF)
    assert read_by_shards.keys() == read_manifest(store, risk_manifest(AS_OF))["inputs"].keys()  # the same reads
    assert unsharded["rows"] == one["rows"] == three["rows"]
    assert three["portfolios"] == 7 and len(whole["risk_metrics"]) == 7
    assert set(whole["firm_risk"]["n_portfolios"]) == {7}                      # firm: the whole book, once
    assert len(whole["scenario_covariance"]) == 2 * 9                          # one 3x3 set per base currency
    assert not Store.from_uri(str(shard_env)).exists(shard_dir("run-three"))   # the shard area is cleared


def test_a_retried_shard_is_idempotent_and_a_missing_shard_commits_nothing(shard_env, monkeypatch):
    monkeypatch.setenv("PIPELINE_RISK_SHARDS", "3")
    for shard in (0, 1, 2, 1):                                                 # shard 1 retried
        tasks.compute_risk_shard(AS_OF, shard, 3, run_key="run-a")
    tasks.compute_risk(AS_OF, shards=3, run_key="run-a")
    retried = _committed(shard_env)
    tasks.compute_risk(AS_OF)
    _assert_same(retried, _committed(shard_env))

    store = Store.from_uri(str(shard_env))
    before = read_manifest(store, risk_manifest(AS_OF))
    for shard in (0, 2):
        tasks.compute_risk_shard(AS_OF, shard, 3, run_key="run-b")
    with pytest.raises(DataNotFoundError, match=r"risk shard\(s\) \[1\] of 3 as of 2026-03-31 \(run run-b\) not "
                                                r"done: .*run-b/1/done\.json; nothing committed"):
        tasks.compute_risk(AS_OF, shards=3, run_key="run-b")
    assert read_manifest(store, risk_manifest(AS_OF)) == before              # the previous commit stands
    assert store.exists(shard_dir("run-b", 0))                               # the done shards wait for the retry


def test_shards_are_contiguous_blocks_of_the_sorted_ids_and_respect_max_map_length(monkeypatch):
    ids = ["P3", "P1", "P10", "P2", "P4"]
    blocks = [shard_portfolios(ids, i, 2) for i in range(2)]
    assert blocks == [["P1", "P10", "P2"], ["P3", "P4"]]
    monkeypatch.setenv("PIPELINE_RISK_SHARDS", "4")
    assert shard_count(10, get_settings()) == 4
    assert shard_count(3, get_settings()) == 3                                # at most one per portfolio
    assert shard_count(10, get_settings(), max_map_length=2) == 2
    monkeypatch.setenv("PIPELINE_RISK_SHARD_PORTFOLIOS", "3")                 # portfolios per shard wins
    assert shard_count(10, get_settings()) == 4
    with pytest.raises(ValueError, match="shard 2 is not one of 0..1"):
        shard_portfolios(ids, 2, 2)


def test_shards_of_another_book_commit_nothing(shard_env, monkeypatch):
    for shard in range(2):
        tasks.compute_risk_shard(AS_OF, shard, 2, run_key="run-c")
    with open(get_settings().reference_dir / "portfolios.csv", "a") as f:        # the book changed since
        f.write("U6,Late book,USD,1000,0.5,0.5\n")
    with pytest.raises(DataNotFoundError, match=r"the risk shards of run run-c cover 7 portfolios as of their days, "
                                                r"the book as of 2026-03-31 has 8"):
        tasks.compute_risk(AS_OF, shards=2, run_key="run-c")
    assert read_manifest(Store.from_uri(str(shard_env)), risk_manifest(AS_OF)) is None


def test_the_commit_leaves_no_shard_area_behind_but_keeps_another_runs(shard_env, monkeypatch):
    """The commit deletes its run's shard area and `outputs/_shards` with it, unless another run's shards wait."""
    from etl.risk.shards import SHARDS_DIR

    store = Store.from_uri(str(shard_env))
    monkeypatch.setenv("PIPELINE_RISK_SHARDS", "2")
    tasks.compute_risk_shard(AS_OF, 0, 2, run_key="run-waiting")               # its shard 1 still to come
    _sharded(monkeypatch, 1, "run-done")
    assert not store.exists(shard_dir("run-done")) and store.exists(shard_dir("run-waiting", 0))
    tasks.compute_risk_shard(AS_OF, 1, 2, run_key="run-waiting")
    tasks.compute_risk(AS_OF, shards=2, run_key="run-waiting")
    assert not store.exists(SHARDS_DIR) and store.exists("outputs")


def test_shards_that_read_different_versions_commit_nothing(shard_env, monkeypatch):
    """Shards started at once around a silver commit read different versions: the commit refuses, naming them (a
    shard started after another is done reads that shard's versions: tests/etl/risk/test_reproduce.py)."""
    from etl.errors import ValidationError

    monkeypatch.setenv("PIPELINE_RISK_SHARDS", "2")
    for shard in (0, 1):
        tasks.compute_risk_shard(AS_OF, shard, 2, run_key="run-c")
    store = Store.from_uri(str(shard_env))
    done = f"{shard_dir('run-c', 1)}/done.json"
    marker = store.read_json(done)
    marker["inputs"]["silver/bars_1d"] += 1                                  # as if it ran after a silver build
    store.write_json(done, marker)
    with pytest.raises(ValidationError, match=r"read different versions of silver/bars_1d .*Rerun "
                                              r"compute_risk_shard \[1\]"):
        tasks.compute_risk(AS_OF, shards=2, run_key="run-c")
    assert read_manifest(store, risk_manifest(AS_OF)) is None


def test_shards_started_around_a_silver_build_read_the_versions_the_plan_pinned(shard_env, monkeypatch):
    """A silver build (or an intraday run's record, or a vacuum) lands after the plan, before shards that start at
    once (none done yet) read the lake: each reads the versions `plan_risk_shards` took, so the run commits what a
    run before the build computes, and records those versions."""
    whole = (tasks.compute_risk(AS_OF), _committed(shard_env))[1]
    monkeypatch.setenv("PIPELINE_RISK_SHARDS", "2")
    plan = tasks.plan_risk_shards(max_map_length=1024)
    pins = plan[0]["inputs"]
    assert {"silver/bars_1d", "silver/bars_5m", "outputs/_runs"} <= pins.keys() and plan[1]["inputs"] == pins
    _write_silver(shard_env, _closes() * 1.1, pd.Timestamp(AS_OF, tz="UTC"))          # a silver build lands
    for shard in plan:
        tasks.compute_risk_shard(AS_OF, shard["shard"], 2, run_key="run-p", inputs=shard["inputs"])
    tasks.compute_risk(AS_OF, shards=2, run_key="run-p")
    _assert_same(_committed(shard_env), whole)
    inputs = read_manifest(Store.from_uri(str(shard_env)), risk_manifest(AS_OF))["inputs"]
    assert {k: inputs[k] for k in ("silver/bars_1d", "silver/bars_5m")} == \
        {k: pins[k] for k in ("silver/bars_1d", "silver/bars_5m")}



def test_shards_priced_on_other_reference_files_than_the_commit_commit_nothing(shard_env, monkeypatch):
    """A positions file edited after the shards ran and before compute_risk commits: the shards' per-portfolio
    tables were valued on the old quantities, the commit's firm tables and its recorded reference digests on the
    new ones. The run must be refused (nothing committed), not committed as one run of the new files (a record
    `risk --reproduce` then contradicts)."""
    from etl.errors import ValidationError
    from etl.settings import get_settings

    for shard in (0, 1):
        tasks.compute_risk_shard(AS_OF, shard, 2, run_key="run-ref")
    positions = get_settings().reference_dir / "positions.csv"
    positions.write_text(positions.read_text().replace("U5,BTC-USD,2025-06-01,-1,", "U5,BTC-USD,2025-06-01,-3,"))
    store = Store.from_uri(str(shard_env))
    with pytest.raises(ValidationError, match=rf"{positions}: not the reference file risk shard\(s\) \[0, 1\] of "
                                              r"run run-ref as of 2026-03-31 read.*nothing committed. Rerun every compute_risk_shard"):
        tasks.compute_risk(AS_OF, shards=2, run_key="run-ref")
    assert read_manifest(store, risk_manifest(AS_OF)) is None


def test_a_retried_commit_after_it_committed_succeeds_without_committing_again(shard_env, monkeypatch):
    """compute_risk commits, deletes the shard area, then its worker dies before Airflow marks it done: the retry
    found no shard markers and failed ("risk shard(s) [0, 1] ... not done") on every attempt, so the end-of-day run
    failed over a complete commit and its load, report and alerts never ran. The retry is the same commit."""
    first = _sharded(monkeypatch, 2, "run-r")
    store = Store.from_uri(str(shard_env))
    committed = read_manifest(store, risk_manifest(AS_OF))
    again = tasks.compute_risk(AS_OF, shards=2, run_key="run-r")
    assert read_manifest(store, risk_manifest(AS_OF)) == committed                # nothing committed again
    assert {k: again[k] for k in ("as_of", "portfolios", "positions", "products", "lookback_days", "rows",
                                  "breaches")} == {k: first[k] for k in ("as_of", "portfolios", "positions",
                                                                         "products", "lookback_days", "rows",
                                                                         "breaches")}
    with pytest.raises(DataNotFoundError, match=r"risk shard\(s\) \[0, 1\] of 2"):   # another run's: not done
        tasks.compute_risk(AS_OF, shards=2, run_key="run-other")


def test_shards_computed_with_other_risk_settings_than_the_commit_commit_nothing(shard_env, monkeypatch):
    """A risk setting changed between the shards and the commit (a retried shard on a worker with another
    environment, an edited .env): shard 1's VaR used a 30-day lookback, the rest 60. The commit checked only the
    table versions and the reference files, so it committed one run of both, recording lookback 60 over figures
    of 30 (`risk --reproduce` then contradicts it)."""
    from etl.errors import ValidationError

    tasks.compute_risk_shard(AS_OF, 0, 2, run_key="run-s")
    monkeypatch.setenv("RISK_VAR_LOOKBACK_DAYS", "30")
    tasks.compute_risk_shard(AS_OF, 1, 2, run_key="run-s")
    monkeypatch.setenv("RISK_VAR_LOOKBACK_DAYS", "60")
    store = Store.from_uri(str(shard_env))
    with pytest.raises(ValidationError, match=r"risk shard\(s\) \[1\] of run run-s as of 2026-03-31 were computed "
                                              r"with var_lookback_days=30, the commit with 60: nothing committed"):
        tasks.compute_risk(AS_OF, shards=2, run_key="run-s")
    assert read_manifest(store, risk_manifest(AS_OF)) is None
    tasks.compute_risk_shard(AS_OF, 1, 2, run_key="run-s")                     # the rerun named
    tasks.compute_risk(AS_OF, shards=2, run_key="run-s")
    assert read_manifest(store, risk_manifest(AS_OF))["params"]["var_lookback_days"] == 60


def test_a_commit_killed_while_clearing_its_shard_area_is_retried_without_committing_again(shard_env, monkeypatch):
    """compute_risk commits, then deletes its run's shard area folder by folder (a recursive delete): SIGKILLed in
    between (a worker lost, OOM), shard 0's marker is gone and shard 1's is there. The retry saw "risk shard(s) [0]
    ... not done" and failed on every attempt over a complete commit (only a retry that found no marker at all was
    recognised), so the end-of-day run never reached its load, report and alerts. The retry is the same commit."""
    import os
    import signal
    import subprocess
    import sys

    from etl.settings import PROJECT_ROOT

    monkeypatch.setenv("PIPELINE_RISK_SHARDS", "2")
    for shard in (0, 1):
        tasks.compute_risk_shard(AS_OF, shard, 2, run_key="run-k")
    script = f"""
import os, signal
from datetime import date
from etl.orchestration import tasks
from etl.risk.shards import shard_dir
from etl.storage import Store
real = Store.delete
def delete(self, rel):  # the recursive delete dies after its first folder
    if rel == shard_dir("run-k"):
        real(self, shard_dir("run-k", 0))
        os.kill(os.getpid(), signal.SIGKILL)
    real(self, rel)
Store.delete = delete
tasks.compute_risk(date.fromisoformat("{AS_OF}"), shards=2, run_key="run-k")
"""
    killed = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, env=os.environ, capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    store = Store.from_uri(str(shard_env))
    committed = read_manifest(store, risk_manifest(AS_OF))
    assert committed["run_key"] == "run-k" and store.exists(shard_dir("run-k", 1))   # committed, half cleared
    again = tasks.compute_risk(AS_OF, shards=2, run_key="run-k")
    assert read_manifest(store, risk_manifest(AS_OF)) == committed                     # nothing committed again
    assert again["portfolios"] == 7 and again["rows"] == {e["table"]: e["rows"] for e in committed["files"].values()}
    assert not store.exists(shard_dir("run-k"))                                       # the clearing finished
