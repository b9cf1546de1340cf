"""`risk --reproduce` (etl/risk/reproduce.py): a committed run recomputed from the versions it recorded, after its
inputs moved on."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq

from etl import cli, commits
from etl.storage import Store
from tests.etl.risk.conftest import AS_OF
from tests.support import warehouse_sample as sample


def _reproduce(run_id: str, out) -> int:
    return cli.main(["risk", "--as-of", str(AS_OF.date()), "--reproduce", run_id, "--output", str(out)])


def test_a_run_is_recomputed_from_the_versions_it_read_after_its_inputs_moved_on(chain, tmp_path, monkeypatch):
    from etl.factors import run_factors
    from etl.risk.runner import run_risk
    from etl.settings import get_settings

    store = Store.from_uri(str(chain["data"]))
    name = commits.risk_manifest(AS_OF.date())
    record = commits.read_manifest(store, name)
    assert record["inputs"]["outputs/_runs"] >= 0 and record["params"]["mc_scenarios"] == 500
    assert {p.rsplit("/", 1)[-1] for p in record["reference"]} >= {"positions.csv", "instruments.csv"}

    assert {"silver/bars_1d", "silver/bars_5m", "outputs/_runs"} <= record["inputs"].keys()

    # what the run read moves on: silver is corrected (every close 1% higher), the factor stage reruns with another
    # window (new betas for the same days), and the risk settings change; the recomputation uses the versions and
    # parameters the run recorded
    b5 = chain["b5"].assign(**{c: chain["b5"][c] * 1.01 for c in ("open", "high", "low", "close", "vwap")})
    sample.write_silver(store, b5, sample.daily_from_5m(b5), AS_OF.year)
    monkeypatch.setenv("FACTOR_WINDOW", "24")
    run_factors(get_settings(), (AS_OF + pd.Timedelta(days=1)).tz_localize("UTC").to_pydatetime())
    monkeypatch.setenv("RISK_MC_SCENARIOS", "700")
    assert _reproduce(record["run_id"], tmp_path / "again") == 0
    for entry in record["files"].values():
        committed = commits.read_entry(store, entry)
        again = pq.read_table(tmp_path / "again" / f"{entry['table']}.parquet")
        assert again.equals(committed), entry["table"]

    # a new run on today's inputs gives other figures: the comparison above is not vacuous
    run_risk(AS_OF.date(), get_settings())
    latest = commits.read_manifest(store, name)["files"]
    for table in ("pnl_attribution", "positions_valued"):
        reproduced = pq.read_table(tmp_path / "again" / f"{table}.parquet")
        assert not commits.read_entry(store, latest[f"{table}/as_of_date={AS_OF.date()}"]).equals(reproduced)


def test_an_unknown_run_changed_reference_or_missing_output_is_refused(chain, tmp_path, capsys):
    store = Store.from_uri(str(chain["data"]))
    run_id = commits.read_manifest(store, commits.risk_manifest(AS_OF.date()))["run_id"]
    assert _reproduce("nope", tmp_path / "x") == 2
    assert f"no run nope committed risk/as_of_date={AS_OF.date()}" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

    try:
        cli.main(["risk", "--as-of", str(AS_OF.date()), "--reproduce", run_id])
    except SystemExit as exc:
        assert exc.code == 2
    assert "needs --as-of D (the run's day) and --output DIR" in capsys.readouterr().err

    from etl.settings import get_settings
    positions = get_settings().reference_dir / "positions.csv"
    positions.write_text(positions.read_text() + "\n")
    assert _reproduce(run_id, tmp_path / "y") == 2
    err = capsys.readouterr().err
    assert f"{positions}: not the reference file risk run {run_id} read" in err and "PIPELINE_REFERENCE_DIR" in err


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


def test_a_sharded_run_whose_shards_read_different_silver_versions_is_refused_or_reproduced(chain, tmp_path):
    """reproduce.py's docstring: a run split into shards "(each shard's reads are in the run's record) is recomputed
    in one process: equal to its shards' results to 1e-12". Each shard reads silver at the version current when it
    runs; commit_shards folds the shards' reads with note_read's max (shards.py:107-109, lake.py:71), so a silver
    build between two shards is recorded as the later version only, the run commits portfolios priced on two
    silver versions without noticing, and reproduce recomputes the first shard's portfolios on the later one."""
    from etl.risk.shards import commit_shards, run_shard
    from etl.settings import get_settings
    from tests.support import warehouse_sample as sample

    store = Store.from_uri(str(chain["data"]))
    day, key = AS_OF.date(), "manual__2026-01-30"
    run_shard(day, 0, 2, key, get_settings())
    b5 = chain["b5"].assign(**{c: chain["b5"][c] * 1.01 for c in ("open", "high", "low", "close", "vwap")})
    sample.write_silver(store, b5, sample.daily_from_5m(b5), AS_OF.year)      # a silver build lands meanwhile
    run_shard(day, 1, 2, key, get_settings())
    commit_shards(day, 2, key, get_settings())
    record = commits.read_manifest(store, commits.risk_manifest(day))
    assert cli.main(["risk", "--as-of", str(day), "--reproduce", record["run_id"],
                     "--output", str(tmp_path / "again")]) == 0
    committed = commits.read_entry(store, record["files"][f"risk_metrics/as_of_date={day}"]).to_pandas()
    again = pq.read_table(tmp_path / "again" / "risk_metrics.parquet").to_pandas()
    cols = ["portfolio_id", "var_99_hist"]
    assert committed[cols].sort_values("portfolio_id").reset_index(drop=True).equals(
        again[cols].sort_values("portfolio_id").reset_index(drop=True)), (
        f"inputs recorded {record['inputs']}\ncommitted:\n{committed[cols]}\nreproduced:\n{again[cols]}")


def test_a_run_whose_inputs_were_vacuumed_is_refused_naming_the_run_and_the_retention(chain, tmp_path, capsys):
    """docs/lake.md: reproduce refuses "a version past the retention" on one line. Silver rebuilt, the day rerun,
    then silver vacuumed: the versions the first run read are gone. The refusal said only a file path
    ("error: .../silver/bars_1d/...parquet"), not that the run's inputs were vacuumed nor what to do."""
    from etl.lake import Lake
    from etl.risk.runner import run_risk
    from etl.settings import get_settings

    store = Store.from_uri(str(chain["data"]))
    run_id = commits.read_manifest(store, commits.risk_manifest(AS_OF.date()))["run_id"]
    b5 = chain["b5"].assign(**{c: chain["b5"][c] * 1.01 for c in ("open", "high", "low", "close", "vwap")})
    sample.write_silver(store, b5, sample.daily_from_5m(b5), AS_OF.year)
    run_risk(AS_OF.date(), get_settings())
    for table in ("silver/bars_1d", "silver/bars_5m"):
        assert Lake.of(store).vacuum(table, retention_hours=0)
    assert _reproduce(run_id, tmp_path / "gone") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"risk run {run_id} of {AS_OF.date()} cannot be recomputed" in err, err
    assert "vacuumed" in err and "PIPELINE_LAKE_RETENTION_DAYS" in err and "bars_1d" in err, err
    assert not (tmp_path / "gone").exists()


def test_output_without_reproduce_is_bad_usage_and_leaves_the_committed_run(chain, tmp_path, capsys):
    """`risk --as-of D --output DIR` (--reproduce forgotten) ran a new risk run on today's data, replaced the day's
    committed run and wrote nothing to DIR, exit 0: the user asked for a copy and got a rewrite."""
    store = Store.from_uri(str(chain["data"]))
    before = commits.read_manifest(store, commits.risk_manifest(AS_OF.date()))
    try:
        code = cli.main(["risk", "--as-of", str(AS_OF.date()), "--output", str(tmp_path / "x")])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    assert "--output DIR is only for --reproduce RUN_ID" in capsys.readouterr().err
    assert commits.read_manifest(store, commits.risk_manifest(AS_OF.date())) == before


def _commit_book(store, day, spreads=(10.0, 80.0), product="BTC-USD"):
    """A recorded order book of `product` on `day`: one 5-minute bucket per spread (bps)."""
    from etl.lake import Lake
    from etl.silver import increments
    from etl.silver.liquidity import LIQUIDITY_DIR, LIQUIDITY_SCHEMA, _table

    start = pd.Timestamp(day, tz="UTC").value // 1000
    book = {"bid_prices": [100.0, 99.0], "bid_quantities": [1.0, 2.0], "ask_prices": [101.0, 102.0],
            "ask_quantities": [1.0, 2.0]}
    rows = pd.DataFrame([{"bucket_start_us": start + i * 300_000_000, "n_snapshots": 1, "mid": 100.5,
                          "spread_bps": spread,
                          **{c: 1.0 for c in ("bid_depth_10bp", "bid_depth_50bp", "bid_depth_100bp",
                                              "ask_depth_10bp", "ask_depth_50bp", "ask_depth_100bp")},
                          "reach_bps": 100.0, **book} for i, spread in enumerate(spreads)])
    increments.commit(store, Lake.of(store), LIQUIDITY_DIR, LIQUIDITY_SCHEMA, {(product, day.isoformat()): _table(rows)},
                      None)


def test_reproduce_uses_the_lvar_percentile_the_run_used_not_todays_setting(chain, tmp_path, monkeypatch):
    """liquidity.liquidity_risk reads RISK_LVAR_PERCENTILE from the settings, and the run record's `params` did not
    name it: reproducing a run after the setting changed gave other spread and impact costs (and LVaR) than the run
    committed, exit 0, nothing said."""
    from etl.risk.runner import run_risk
    from etl.settings import get_settings

    store = Store.from_uri(str(chain["data"]))
    _commit_book(store, AS_OF.date())
    run_risk(AS_OF.date(), get_settings())
    record = commits.read_manifest(store, commits.risk_manifest(AS_OF.date()))
    entry = record["files"][f"liquidity_risk/as_of_date={AS_OF.date()}"]
    assert entry["rows"] > 0
    monkeypatch.setenv("RISK_LVAR_PERCENTILE", "50")             # was 99 (the default) when the run ran
    assert _reproduce(record["run_id"], tmp_path / "again") == 0
    again = pq.read_table(tmp_path / "again" / "liquidity_risk.parquet").to_pandas()
    committed = commits.read_entry(store, entry).to_pandas()
    cols = ["portfolio_id", "spread_cost", "lvar_99"]
    assert again[cols].equals(committed[cols]), f"committed:\n{committed[cols]}\nreproduced:\n{again[cols]}"


def test_a_run_is_reproduced_from_a_copy_of_its_reference_files_elsewhere(chain, tmp_path, monkeypatch):
    """A refused reproduce says "point PIPELINE_REFERENCE_DIR at the files of that day"; the run recorded its
    reference files by absolute path and reproduce compared the paths, so the very same files copied to an archive
    folder were refused as "not the reference file risk run ... read" (exit 2): the advice could never work."""
    import shutil

    from etl.settings import get_settings

    store = Store.from_uri(str(chain["data"]))
    record = commits.read_manifest(store, commits.risk_manifest(AS_OF.date()))
    settings = get_settings()
    archive = tmp_path / "archive" / str(AS_OF.date())
    shutil.copytree(settings.reference_dir, archive)
    shutil.copy(settings.stress_scenarios_file, archive / "stress_scenarios.csv")
    monkeypatch.setenv("PIPELINE_REFERENCE_DIR", str(archive))
    monkeypatch.setenv("RISK_STRESS_SCENARIOS", str(archive / "stress_scenarios.csv"))
    assert _reproduce(record["run_id"], tmp_path / "again") == 0
    for entry in record["files"].values():
        again = pq.read_table(tmp_path / "again" / f"{entry['table']}.parquet")
        assert again.equals(commits.read_entry(store, entry)), entry["table"]


def test_a_liquidity_build_during_a_risk_run_does_not_split_its_order_books_across_versions(chain, tmp_path,
                                                                                          monkeypatch):
    """liquidity.read_books listed silver/liquidity_5m once per product: a liquidity build committing between two
    products' reads gave the run BTC-USD's book of one version and ETH-USD's of the next, the record named only the
    later version, and reproduce recomputed BTC-USD's costs on a book the run never saw. One run reads one version
    of the table."""
    from etl.lake import Lake
    from etl.risk.runner import run_risk
    from etl.settings import get_settings
    from etl.silver.liquidity import LIQUIDITY_DIR

    store = Store.from_uri(str(chain["data"]))
    for product in ("BTC-USD", "ETH-USD"):
        _commit_book(store, AS_OF.date(), product=product)
    files, landed = Lake.files, []

    def a_build_lands_after_the_first_read(self, rel, version=None):
        out = files(self, rel, version)
        if rel == LIQUIDITY_DIR and version is None and not landed:
            landed.append(rel)       # a liquidity build commits a wider BTC-USD book of the day meanwhile
            _commit_book(store, AS_OF.date(), spreads=(200.0, 400.0))
        return out

    monkeypatch.setattr(Lake, "files", a_build_lands_after_the_first_read)
    run_risk(AS_OF.date(), get_settings())
    monkeypatch.setattr(Lake, "files", files)
    assert landed
    record = commits.read_manifest(store, commits.risk_manifest(AS_OF.date()))
    assert _reproduce(record["run_id"], tmp_path / "again") == 0
    for table in ("liquidity_risk", "liquidity_positions"):
        again = pq.read_table(tmp_path / "again" / f"{table}.parquet").to_pandas()
        committed = commits.read_entry(store, record["files"][f"{table}/as_of_date={AS_OF.date()}"]).to_pandas()
        assert again["spread_cost"].equals(committed["spread_cost"]), (
            f"{table}: inputs {record['inputs']}\ncommitted:\n{committed}\nreproduced:\n{again}")


def _listing(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def test_reproducing_into_a_folder_used_before_leaves_exactly_the_new_runs_tables(chain, tmp_path):
    """reproduce wrote table by table straight into DIR: a DIR reused for another run kept the earlier run's tables
    this run does not have beside the new ones, read as part of the reproduced run."""
    store = Store.from_uri(str(chain["data"]))
    record = commits.read_manifest(store, commits.risk_manifest(AS_OF.date()))
    out = tmp_path / "out" / "why"
    assert _reproduce(record["run_id"], out) == 0
    # an earlier reproduce (of a run with a table this one lacks) left that table there
    (out / "retired_table.parquet").write_bytes((out / "risk_metrics.parquet").read_bytes())
    assert _reproduce(record["run_id"], out) == 0
    tables = {p.name for p in out.glob("*.parquet")}
    assert tables == {f"{e['table']}.parquet" for e in record["files"].values()}, sorted(tables)
    assert [p.name for p in out.parent.iterdir()] == ["why"], sorted(out.parent.iterdir())   # nothing left beside


def test_a_non_empty_folder_that_is_no_reproduce_output_is_refused_naming_it(chain, tmp_path, capsys):
    """A DIR holding the user's own files had the reproduced tables written among them (exit 0); reusing it later
    would have to delete files reproduce never wrote. It is refused, naming the folder, and left as it was."""
    store = Store.from_uri(str(chain["data"]))
    record = commits.read_manifest(store, commits.risk_manifest(AS_OF.date()))
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert _reproduce(record["run_id"], out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err and "not empty" in err, err
    assert _listing(out) == {"notes.txt": b"keep me"}
    assert _reproduce(record["run_id"], tmp_path / "empty_is_fine") == 0       # an empty or new folder is taken
    (tmp_path / "empty").mkdir()
    assert _reproduce(record["run_id"], tmp_path / "empty") == 0
    assert {p.name for p in (tmp_path / "empty").glob("*.parquet")} == {
        f"{e['table']}.parquet" for e in record["files"].values()}


def test_a_reproduce_failing_part_way_leaves_the_folder_as_it_was(chain, tmp_path, monkeypatch):
    """A write failing on the third table (disk full) left the first two in DIR, over an earlier run's tables: a
    partial mix that looks like a result. Now DIR is as it was before (absent, or the earlier output whole)."""
    import pytest

    from etl.risk import reproduce as reproduce_module
    from etl.risk.runner import run_risk
    from etl.settings import get_settings

    store = Store.from_uri(str(chain["data"]))
    first = commits.read_manifest(store, commits.risk_manifest(AS_OF.date()))["run_id"]
    run_risk(AS_OF.date(), get_settings())
    second = commits.read_manifest(store, commits.risk_manifest(AS_OF.date()))["run_id"]
    write, calls = reproduce_module.pq.write_table, []

    def disk_full_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return write(*args, **kwargs)

    out = tmp_path / "out" / "why"
    for before in (None, first):       # a new folder; a folder holding the first run's reproduce
        if before:
            assert _reproduce(before, out) == 0
        earlier = _listing(out)
        calls.clear()
        monkeypatch.setattr(reproduce_module.pq, "write_table", disk_full_on_the_third)
        with pytest.raises(OSError, match="No space left"):
            reproduce_module.reproduce(AS_OF.date(), second, out)
        monkeypatch.setattr(reproduce_module.pq, "write_table", write)
        assert len(calls) == 3
        assert _listing(out) == earlier, sorted(set(_listing(out)) ^ set(earlier))
        assert sorted(p.name for p in out.parent.iterdir()) == (["why"] if before else []), sorted(out.parent.iterdir())


def test_a_run_whose_input_versions_left_the_log_is_refused_not_recomputed_without_them(chain, tmp_path, monkeypatch,
                                                                                        capsys):
    """Once the log retention has deleted the log entries of the silver version a run read, delta-rs says "no table"
    for that version and Lake.table took it for an absent table (as for a table the run found absent): reproduce
    recomputed the run with no bars at all, exit 0. It is refused, naming the table and the version."""
    import glob
    import os
    import time

    store = Store.from_uri(str(chain["data"]))
    record = commits.read_manifest(store, commits.risk_manifest(AS_OF.date()))
    read = record["inputs"]["silver/bars_1d"]
    monkeypatch.setenv("PIPELINE_LAKE_RETENTION_DAYS", "1")

    def silver_corrected(times: int, start: int) -> None:
        for i in range(start, start + times):
            b5 = chain["b5"].assign(**{c: chain["b5"][c] * (1 + i / 1000) for c in ("open", "high", "low", "close",
                                                                                     "vwap")})
            sample.write_silver(store, b5, sample.daily_from_5m(b5), AS_OF.year)

    silver_corrected(10, 1)                    # a checkpoint past the version the run read
    ten_days_ago = time.time() - 10 * 86400
    for entry in glob.glob(str(chain["data"] / "silver" / "*" / "_delta_log" / "*")):     # ten days pass
        os.utime(entry, (ten_days_ago, ten_days_ago))
    silver_corrected(10, 11)                   # the next checkpoint deletes the log older than a day
    assert not (chain["data"] / "silver/bars_1d/_delta_log" / f"{read:020d}.json").exists()
    assert _reproduce(record["run_id"], tmp_path / "gone") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"risk run {record['run_id']} of {AS_OF.date()} cannot be recomputed" in err, err
    assert "silver/bars_1d" in err and f"version {read} is not in the table's log any more" in err, err
    assert not (tmp_path / "gone").exists()


def test_a_run_superseded_by_a_rerun_long_after_a_killed_run_is_still_reproduced(chain, tmp_path, monkeypatch):
    """docs/commit_protocol.md: superseded files "stay readable ... for PIPELINE_LAKE_RETENTION_DAYS", a run record in
    force keeping those a killed run removed "until the day is rerun". A rerun landing more than the retention after
    the killed run: `commits.maintain` deleted the earlier run's files the moment the rerun superseded it (their
    removal from the table, by the killed run, was old), so `risk --reproduce` of that run, superseded a minute
    ago, was refused as "vacuumed (superseded longer than PIPELINE_LAKE_RETENTION_DAYS ago)"."""
    import glob
    import json

    import pytest

    from etl.lake import Lake
    from etl.risk.runner import run_risk
    from etl.settings import get_settings

    store = Store.from_uri(str(chain["data"]))
    first = commits.read_manifest(store, commits.risk_manifest(AS_OF.date()))
    rows = {entry["table"]: commits.read_entry(store, entry) for entry in first["files"].values()}
    monkeypatch.setenv("PIPELINE_LAKE_RETENTION_DAYS", "1")
    write = Lake.write

    def killed(self, rel, *args, **kwargs):       # a rerun dies between its table commits and its record
        if rel == commits.RUNS:
            raise KeyboardInterrupt("killed before the run record")
        return write(self, rel, *args, **kwargs)

    monkeypatch.setattr(Lake, "write", killed)
    with pytest.raises(KeyboardInterrupt):
        run_risk(AS_OF.date(), get_settings())
    monkeypatch.setattr(Lake, "write", write)
    ten_days = 10 * 86400 * 1000
    for entry in glob.glob(str(chain["data"] / "outputs" / "*" / "_delta_log" / "*.json")):   # ten days pass
        actions = [json.loads(line) for line in open(entry).read().splitlines()]
        for action in actions:
            if "remove" in action:
                action["remove"]["deletionTimestamp"] -= ten_days
        open(entry, "w").write("\n".join(json.dumps(a) for a in actions) + "\n")
    commits.maintain(store)                                       # the record in force keeps its files
    assert commits.read_manifest(store, commits.risk_manifest(AS_OF.date()))["run_id"] == first["run_id"]
    run_risk(AS_OF.date(), get_settings())                        # the day is rerun, ten days later
    commits.maintain(store)                                       # compact, that night
    assert _reproduce(first["run_id"], tmp_path / "again") == 0
    for table, committed in rows.items():
        assert pq.read_table(tmp_path / "again" / f"{table}.parquet").equals(committed), table
    # past the retention after the rerun superseded it, they go
    monkeypatch.setenv("PIPELINE_LAKE_RETENTION_DAYS", "0")
    commits.maintain(store)
    assert not any(store.exists(p) for entry in first["files"].values() for p in entry["files"])


def test_a_reproduce_killed_while_putting_its_output_in_place_leaves_the_earlier_output_or_the_new_one(chain,
                                                                                                       tmp_path):
    """DIR holding an earlier reproduce's output was moved aside (`.DIR.old-*`, hidden), then the new one renamed in:
    a SIGKILL between the two left no DIR at all, the earlier output only in a hidden folder nothing restores.
    A real `risk --reproduce` process is SIGKILLed before each of its folder moves and deletions in turn (k = 1, 2,
    ... until one run finishes): DIR always holds the earlier output whole or the new one whole."""
    import os
    import signal
    import subprocess
    import sys

    from etl.risk.runner import run_risk
    from etl.settings import PROJECT_ROOT, get_settings

    store = Store.from_uri(str(chain["data"]))
    first = commits.read_manifest(store, commits.risk_manifest(AS_OF.date()))["run_id"]
    run_risk(AS_OF.date(), get_settings())
    second = commits.read_manifest(store, commits.risk_manifest(AS_OF.date()))["run_id"]
    assert _reproduce(second, tmp_path / "clean") == 0
    new = _listing(tmp_path / "clean")
    out = tmp_path / "out" / "why"
    assert _reproduce(first, out) == 0
    earlier = _listing(out)
    assert earlier and new and earlier != new
    script = """
import os, shutil, signal, sys
from etl import cli
from etl.risk import reproduce
steps, kill_at, real_write = [0], int(sys.argv[1]), reproduce._write
def step(real):
    def wrapped(*args, **kwargs):
        steps[0] += 1
        if steps[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return wrapped
def write(*args, **kwargs):   # from here on, each folder move or deletion is a step
    os.rename, os.replace, shutil.rmtree = step(os.rename), step(os.replace), step(shutil.rmtree)
    return real_write(*args, **kwargs)
reproduce._write = write
sys.exit(cli.main(sys.argv[2:]))
"""
    kills = 0
    for kill_at in range(1, 10):
        run = subprocess.run([sys.executable, "-c", script, str(kill_at), "risk", "--as-of", str(AS_OF.date()),
                              "--reproduce", second, "--output", str(out)], cwd=PROJECT_ROOT, env=os.environ,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode in (0, -signal.SIGKILL), run.stderr[-2000:]
        assert _listing(out) in (earlier, new), (kill_at, sorted(out.parent.iterdir()))
        if run.returncode == 0:
            break
        kills += 1
        assert _reproduce(first, out) == 0 and _listing(out) == earlier     # DIR holds the earlier output again
    assert kills >= 1 and _listing(out) == new
