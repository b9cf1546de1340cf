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
