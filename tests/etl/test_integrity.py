"""Corrupt lake files (issue 28 item 3): a flipped byte inside a data page of a bronze, a silver or a risk output
file is caught (page checksums, content hashes); each reader quarantines or refuses it naming the path and the
repair, and a rerun after the repair equals the clean run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from etl import candles, commits, db
from etl.cli import main
from etl.integrity import CorruptFileError, repair
from etl.lake import Lake
from etl.silver import read_bars
from etl.silver.incremental import BARS_1D_DIR, SILVER_TABLES, file_digests, write_partition_file
from etl.storage import get_store
from tests.support.reference import small_reference
from tests.support.silver_sample import silver_file

ROOT = Path(__file__).resolve().parents[2]
PRODUCTS = ["BTC-USD", "ETH-USD"]
AS_OF = "2026-03-01"


@pytest.fixture
def lake(data_dir, simulator, tmp_path, monkeypatch):
    """A data root with a small book; `lake.chain()` runs ingest -> silver -> risk through the CLI."""
    small_reference(ROOT / "etl" / "reference_data", tmp_path / "reference", PRODUCTS)
    for name, value in {"PIPELINE_REFERENCE_DIR": str(tmp_path / "reference"), "PIPELINE_DAILY_HISTORY_DAYS": "30",
                        "PIPELINE_STATE_DIR": str(tmp_path / "state")}.items():
        monkeypatch.setenv(name, value)
    return data_dir


def _ingest() -> None:
    products = ",".join(PRODUCTS)
    assert main(["ingest", "--products", products, "--start", "2026-01-25", "--end", "2026-03-02",
                 "--granularity", "86400"]) == 0
    assert main(["ingest", "--products", products, "--start", "2026-03-01T00:00", "--end", "2026-03-01T06:00"]) == 0


def _chain() -> None:
    _ingest()
    assert main(["silver"]) == 0
    assert main(["risk", "--as-of", AS_OF]) == 0


def flip_page_bytes(path: Path, column: str = "close") -> None:
    """XOR two bytes near the end of `column`'s column chunk: the tail of its last data page's compressed values
    (numbers are written without a dictionary page), not a page header nor the footer."""
    meta = pq.ParquetFile(path).metadata
    chunk = meta.row_group(0).column(meta.schema.names.index(column))
    assert chunk.dictionary_page_offset is None
    offset = chunk.data_page_offset + chunk.total_compressed_size - 3
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    data[offset + 1] ^= 0x33
    path.write_bytes(bytes(data))


def _risk_tables(data_dir: Path) -> dict[str, pd.DataFrame]:
    store = get_store()
    manifest = commits.read_manifest(store, commits.risk_manifest(pd.Timestamp(AS_OF).date()))
    out = {}
    for key, entry in manifest["files"].items():
        df = commits.read_entry(store, entry).to_pandas()
        out[key] = df.drop(columns=[c for c in df.columns if c == "risk_run_id"])
    return out


def _assert_same_risk(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        pd.testing.assert_frame_equal(a[key], b[key], obj=key)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def ingest_files(commit: dict) -> list[str]:
    """The files an ingest commit added, from the table's log (the add actions of its version)."""
    lake = Lake(get_store().root)
    now = set(lake.files(candles.CANDLES_DIR, commit["version"]))
    return sorted(now - set(lake.files(candles.CANDLES_DIR, commit["version"] - 1) or []))


def test_every_commit_records_the_content_hash_of_its_files(lake):
    _chain()
    store = get_store()
    commit = next(c for c in Lake(str(lake)).table(candles.CANDLES_DIR).history() if candles.BATCH_ID in c)
    batch = {"sha256": json.loads(commit["sha256"]), "files": ingest_files(commit)}
    assert batch["sha256"] and set(batch["sha256"]) == set(batch["files"])
    assert all(store.digest(rel) == sha for rel, sha in batch["sha256"].items())
    silver = [f for table in SILVER_TABLES for f in Lake.of(store).files(table) or []]  # digests in their names
    assert silver and set(file_digests(silver)) == set(silver)
    assert all(store.digest(rel) == sha for rel, sha in file_digests(silver).items())
    manifest = commits.read_manifest(store, commits.risk_manifest(pd.Timestamp(AS_OF).date()))
    assert all(store.digest(path) == sha for e in manifest["files"].values() for path, sha in e["files"].items())


def test_flipped_bytes_in_a_bronze_page_quarantine_the_file_and_a_reingest_restores_silver(lake, capsys, caplog):
    _ingest()
    assert main(["silver"]) == 0
    clean = {k: read_bars(k) for k in ("5m", "1d")}

    rel = next(f for f in candles.files(Lake(str(lake)), products=["BTC-USD"], keep=lambda d: d == "2026-03-01")
               if pq.ParquetFile(lake / f).metadata.num_rows > 100)  # the day's 1-minute candles (silver folded them)
    flip_page_bytes(lake / rel)
    assert main(["silver", "--full-refresh"]) == 0  # the build goes on without it
    moved = lake / "bronze/quarantined_files" / rel[len("bronze/"):]
    assert moved.exists() and not (lake / rel).exists()
    reason = json.loads(moved.with_name(moved.name + ".reason.json").read_text())
    assert reason["file"] == rel and "page checksum mismatch" in reason["reason"]
    out = capsys.readouterr().out  # the summary the run log records, and the error log line with the repair
    assert f"QUARANTINED 1 corrupt bronze file(s), re-ingest their windows: {moved.relative_to(lake)}" in out
    assert any(str(lake / rel) in r.message and "python -m etl ingest --products BTC-USD --start 2026-03-01 "
               "--end 2026-03-02 --granularity 60" in r.message for r in caplog.records if r.levelname == "ERROR")
    assert len(read_bars("5m", ["BTC-USD"])) < len(clean["5m"][clean["5m"]["product_id"] == "BTC-USD"])

    # the repair the docs and the log give: re-ingest that window, then silver
    assert main(["ingest", "--products", "BTC-USD", "--start", "2026-03-01T00:00", "--end", "2026-03-01T06:00"]) == 0
    assert main(["silver"]) == 0
    drop = ["first_candle_at", "last_candle_at"]
    for kind in ("5m", "1d"):
        pd.testing.assert_frame_equal(read_bars(kind).drop(columns=drop), clean[kind].drop(columns=drop))


def test_a_bronze_file_replaced_by_other_valid_parquet_fails_its_hash_and_is_quarantined(lake):
    _ingest()
    files = sorted((lake / "bronze/candles/product_id=ETH-USD").rglob("*.parquet"))
    victim, other = files[0], files[1]
    victim.write_bytes(other.read_bytes())  # every page checks out: only the content hash can tell
    assert main(["silver"]) == 0
    reason = json.loads(next((lake / "bronze/quarantined_files").rglob("*.reason.json")).read_text())
    assert reason["file"] == str(victim.relative_to(lake)) and "content hash" in reason["reason"]


def test_flipped_bytes_in_a_silver_daily_file_refuse_risk_until_a_full_refresh(lake, capsys):
    _chain()
    clean = _risk_tables(lake)
    daily = silver_file(lake, "silver/bars_1d/product_id=BTC-USD/year=2026/part-0.parquet")
    flip_page_bytes(daily)
    capsys.readouterr()
    assert main(["risk", "--as-of", AS_OF]) == 2
    err = _one_line_error(capsys)
    assert str(daily) in err and "page checksum mismatch" in err and "python -m etl silver --full-refresh" in err
    with pytest.raises(CorruptFileError):
        read_bars("1d")

    assert main(["silver", "--full-refresh"]) == 0
    assert main(["risk", "--as-of", AS_OF]) == 0
    _assert_same_risk(_risk_tables(lake), clean)


def test_a_truncated_silver_daily_file_says_what_to_run(lake, capsys):
    _chain()
    daily = silver_file(lake, "silver/bars_1d/product_id=ETH-USD/year=2026/part-0.parquet")
    daily.write_bytes(daily.read_bytes()[: daily.stat().st_size // 2])
    capsys.readouterr()
    assert main(["risk", "--as-of", AS_OF]) == 2
    err = _one_line_error(capsys)
    assert str(daily) in err and "is corrupt" in err and "python -m etl silver --full-refresh" in err


def test_flipped_bytes_in_a_risk_output_refuse_the_load_until_risk_is_rerun(lake, pg_url, capsys, monkeypatch):
    _chain()
    clean = _risk_tables(lake)
    manifest = commits.read_manifest(get_store(), commits.risk_manifest(pd.Timestamp(AS_OF).date()))
    (rel,) = manifest["files"]["risk_metrics/as_of_date=2026-03-01"]["files"]
    flip_page_bytes(lake / rel, "var_99_hist")
    with db.scratch_database(pg_url, "integrity") as url:
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        capsys.readouterr()
        assert main(["load", "--no-dbt"]) == 2
        err = _one_line_error(capsys)
        assert str(lake / rel) in err and "page checksum mismatch" in err and f"python -m etl risk --as-of {AS_OF}" in err
        assert db.run_psql("select count(*) from raw.risk_metrics", url=url) .strip() == "0"  # the load rolled back

        assert main(["risk", "--as-of", AS_OF]) == 0
        assert main(["load", "--no-dbt"]) == 0
        _assert_same_risk(_risk_tables(lake), clean)
        loaded = db.run_psql("select count(*) from raw.risk_metrics", url=url)
        assert int(loaded) == len(clean["risk_metrics/as_of_date=2026-03-01"]) > 0


def test_a_committed_output_overwritten_with_other_valid_parquet_is_refused_by_its_hash(lake):
    _chain()
    store = get_store()
    manifest = commits.read_manifest(store, commits.risk_manifest(pd.Timestamp(AS_OF).date()))
    ((a, sha),) = manifest["files"]["pnl_daily/as_of_date=2026-03-01"]["files"].items()
    (b,) = manifest["files"]["portfolio_valuation/as_of_date=2026-03-01"]["files"]
    (Path(store.path(a))).write_bytes(Path(store.path(b)).read_bytes())
    with pytest.raises(CorruptFileError, match=r"content hash differs from its commit.*python -m etl risk --as-of"):
        store.read_parquet(a, sha256=sha)


@pytest.mark.parametrize("rel, command", [
    ("bronze/candles/product_id=BTC-USD/date=2026-03-01/b.parquet",
     "python -m etl ingest --products BTC-USD --start 2026-03-01 --end 2026-03-02`"),
    ("bronze/candles/product_id=ETH-USD/date=2026-02-28/compacted-v000001-g86400.parquet",
     "python -m etl ingest --products ETH-USD --start 2026-02-28 --end 2026-03-01 --granularity 86400"),
    ("silver/bars_5m/product_id=BTC-USD/date=2026-03-01/part-0.parquet", "python -m etl silver --full-refresh"),
    ("outputs/risk_metrics/as_of_date=2026-03-01/r.parquet", "python -m etl risk --as-of 2026-03-01"),
    ("outputs/factor_returns/date=2026-03-01/r.parquet", "python -m etl factors --end 2026-03-01"),
    ("outputs/intraday_risk/as_of_date=2026-03-01/bucket=1405/r.parquet", "python -m etl intraday --bucket 2026-03-01T14:05"),
])
def test_repair_names_the_command_that_rewrites_the_file(rel, command):
    assert f"`{command}" in repair(rel)


def test_a_reader_meeting_a_silver_build_in_flight_reads_the_committed_version_without_waiting(lake):
    """A build writes its files before its commit: a reader in between reads the table's committed version (the
    log does not name the new file yet), checked whole, and then the commit's."""
    _chain()
    store = get_store()
    rel = str(silver_file(lake, "silver/bars_1d/product_id=BTC-USD/year=2026/part-0.parquet").relative_to(lake))
    before = read_bars("1d", ["BTC-USD"])
    table = store.read_parquet(rel)
    written = write_partition_file(store, BARS_1D_DIR, {"product_id": "BTC-USD", "year": "2026"},
                          table.slice(0, table.num_rows - 1))  # the new version, not committed yet
    pd.testing.assert_frame_equal(read_bars("1d", ["BTC-USD"]), before)
    schema, keys = SILVER_TABLES[BARS_1D_DIR]
    Lake.of(store).commit_files(BARS_1D_DIR, [written], pa.schema([*schema, *(pa.field(k, pa.string()) for k in keys)]),
                                keys, remove=[rel])  # the commit
    assert len(read_bars("1d", ["BTC-USD"])) == len(before) - 1


@pytest.mark.parametrize("rel, marks", [
    ("bronze/trades/product_id=BTC-USD/date=2026-03-01/b.parquet", "trade bars of BTC-USD on 2026-03-01 incomplete"),
    ("bronze/order_book/product_id=BTC-USD/date=2026-03-01/b.parquet", "builds from the rest;"),
])
def test_repair_of_a_streamed_bronze_file_says_it_cannot_be_fetched_again(rel, marks):
    """The WebSocket has no history: no re-ingest brings a streamed file's rows back, only a backup."""
    text = repair(rel)
    assert "cannot be fetched again" in text and "sets the file aside into bronze/quarantined_files/" in text
    assert marks in text and "restore the data folder from a backup" in text and "ingest" not in text
