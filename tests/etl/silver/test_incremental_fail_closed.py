"""Silver fail-closed (issue 12 items 2 and 7): one writer at a time, state records what was read, bad inputs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from etl.cli import main
from etl.errors import ValidationError
from etl.lake import Lake
from etl.settings import PROJECT_ROOT
from etl.silver import build, read_bars
from etl.silver.incremental import LAST_TABLE, SILVER_READ, SILVER_TABLES
from etl.storage import get_store
from tests.etl.silver.test_incremental import FUTURE, T0, commit_batch, minute_candles, silver_files, write_batch
from tests.support.silver_sample import silver_file, silver_read


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "etl", *args], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _wait_for_line(proc: subprocess.Popen, needle: str, limit: int = 500) -> list[str]:
    lines = []
    for _ in range(limit):
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} never logged; got {lines}")


# ---- item 2: one writer ---------------------------------------------------------------------------------------
def test_silver_single_writer_full_refresh_paused_mid_way_loses_no_bars(data_dir, simulator, tmp_path):
    """Issue 12 item 2 replayed with real processes: a full refresh is stopped (SIGSTOP) after it has listed bronze,
    a new day is ingested, an incremental build is started, then the full refresh resumes (SIGCONT). The
    incremental build commits first and takes in the new day; the resumed full refresh, whose tables moved on
    since it read them, fails with a conflict instead of committing its older view (Delta's optimistic
    concurrency, no lock): no bars lost, same files as a clean rebuild of the same bronze."""
    day1, day2 = datetime(2026, 1, 5), datetime(2026, 1, 6)
    assert main(["ingest", "--products", "BTC-USD", "--start", f"{day1:%Y-%m-%dT%H:%M}",
                 "--end", f"{day1 + timedelta(hours=3):%Y-%m-%dT%H:%M}"]) == 0
    assert main(["silver"]) == 0

    full = _cli("silver", "--full-refresh")
    _wait_for_line(full, "bronze partitions to rebuild")
    full.send_signal(signal.SIGSTOP)
    try:
        ingest = subprocess.run([sys.executable, "-m", "etl", "ingest", "--products", "BTC-USD", "--start",
                                 f"{day2:%Y-%m-%dT%H:%M}", "--end", f"{day2 + timedelta(hours=1):%Y-%m-%dT%H:%M}"],
                                cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
        assert ingest.returncode == 0, ingest.stderr
        incremental = _cli("silver")
        out, err = incremental.communicate(timeout=120)  # not blocked behind the paused full refresh
        assert incremental.returncode == 0, err
        assert "1 bronze batch(es) taken in" in out
    finally:
        full.send_signal(signal.SIGCONT)
    assert full.wait(120) == 2
    assert "a concurrent writer changed the rows this commit replaces" in full.stderr.read()

    bars = read_bars("5m", ["BTC-USD"], start=day2.date(), end=day2.date())
    assert len(bars) == 12 and bars["n_candles"].sum() == 60  # the new day's 60 candles are all in silver
    assert build().partitions == 0  # and recorded as read: nothing left to do

    clean = tmp_path / "clean"
    shutil.copytree(data_dir / "bronze", clean / "bronze")
    os.environ["PIPELINE_DATA_DIR"] = str(clean)
    build(full_refresh=True)
    os.environ["PIPELINE_DATA_DIR"] = str(data_dir)
    assert silver_files(data_dir) == silver_files(clean)


def test_silver_state_records_only_the_batches_it_read(data_dir):
    """A batch whose commit lands after silver read bronze is not recorded: the next run takes it in."""
    write_batch(data_dir, minute_candles("BTC-USD", T0, 60), "b1", T0 + timedelta(days=1))
    late = minute_candles("BTC-USD", T0 + timedelta(hours=1), 60, seed=1)
    files = write_batch(data_dir, late, "b2", T0 + timedelta(days=1, hours=1), commit=False)
    # b2's file is there, its commit is not (yet)
    assert build(now=FUTURE).rows_in == 60
    read = silver_read(data_dir)
    assert read["bronze_version"] == 1 and read["partitions"]["BTC-USD/2026-01-05"] == {}  # b1's commit
    commit_batch(data_dir, files, "b2")
    again = build(now=FUTURE)
    assert again.batches == 1 and again.rows_in == 120 and len(read_bars("5m")) == 24
    assert files


# ---- item 7: error gaps -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content, what", [("{not json", "not valid JSON"),
                                           ('{"batches": ["b1"]}', "key missing or mistyped")])
def test_silver_corrupt_state_exits_2_naming_the_file_and_the_fix(data_dir, capsys, content, what):
    """The state is the metadata of silver's last commit (SILVER_READ on the last table): a corrupt one is
    committed here the way a build commits it."""
    write_batch(data_dir, minute_candles("BTC-USD", T0, 60), "b1", T0 + timedelta(days=1))
    schema, keys = SILVER_TABLES[LAST_TABLE]
    Lake.of(get_store()).commit_files(LAST_TABLE, [], pa.schema([*schema, *(pa.field(k, pa.string()) for k in keys)]),
                                      keys, metadata={SILVER_READ: content})
    assert main(["silver"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{data_dir / LAST_TABLE} version 1" in err and what in err \
        and "--full-refresh" in err
    assert not (data_dir / "silver/bars_5m").exists()  # nothing written
    assert main(["silver", "--full-refresh"]) == 0 and silver_read(data_dir)


def test_silver_truncated_bronze_file_is_quarantined_with_its_reason_and_silver_goes_on(data_dir):
    write_batch(data_dir, minute_candles("BTC-USD", T0, 2 * 1440), "b1", T0 + timedelta(days=2))
    bad = write_batch(data_dir, minute_candles("BTC-USD", T0, 60, seed=3), "b2", T0 + timedelta(days=3))[0]
    path = data_dir / bad
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated

    summary = build(now=FUTURE)
    moved = data_dir / "bronze/quarantined_files" / bad[len("bronze/"):]
    assert summary.bad_files == [str(moved.relative_to(data_dir))] and not path.exists() and moved.exists()
    reason = json.loads((moved.parent / (moved.name + ".reason.json")).read_text())
    assert reason["file"] == bad and "parquet" in reason["reason"].lower()
    assert summary.rows_in == 2 * 1440 and len(read_bars("5m")) == 2 * 288  # b1's rows, both days
    assert build(now=FUTURE).partitions == 0  # the next run is not blocked either


def test_silver_incremental_cannot_repair_a_bad_daily_file_and_says_full_refresh(data_dir):
    write_batch(data_dir, minute_candles("BTC-USD", T0, 60), "b1", T0 + timedelta(hours=1))
    build(now=T0 + timedelta(hours=1))  # the day so far (a finished day whose minutes stop at 01:00 has no bar)
    daily = silver_file(data_dir, "silver/bars_1d/product_id=BTC-USD/year=2026/part-0.parquet")
    daily.write_bytes(b"PAR1 garbage")
    now = T0 + timedelta(days=1, hours=1)
    write_batch(data_dir, minute_candles("BTC-USD", T0 + timedelta(days=1), 60), "b2", now)
    with pytest.raises(ValidationError, match=rf"{daily.name}: unreadable silver daily file .*--full-refresh"):
        build(now=now)
    assert build(full_refresh=True, now=now).bars_1d == 2
    assert len(read_bars("1d")) == 2


# ---- chaos: SIGKILL a real silver build at seeded points, rerun, compare with a clean build ---------------------
def _written_since(folder: Path, started: float) -> int:
    """Visible Parquet files written since `started` (a temporary file may be renamed between listing and stat)."""
    n = 0
    for p in folder.rglob("*.parquet"):
        with contextlib.suppress(FileNotFoundError):
            n += not p.name.startswith(".") and p.stat().st_mtime >= started
    return n


@pytest.mark.slow
def test_chaos_sigkill_silver_at_seeded_points_then_rerun_equals_clean_run(data_dir, simulator, tmp_path):
    """Chaos (issue 12): `python -m etl silver` is SIGKILLed after a seeded number of its partition files (a first
    build, and a full refresh over a complete silver), then the scheduler's plain `silver` reruns: the silver files
    equal a clean build of the same bronze, byte for byte, and no partial file is visible."""
    import random

    import pyarrow.parquet as pq

    day = datetime(2026, 1, 5)
    assert main(["ingest", "--products", "BTC-USD,ETH-USD,SOL-USD", "--start", f"{day:%Y-%m-%dT%H:%M}",
                 "--end", f"{day + timedelta(days=3):%Y-%m-%dT%H:%M}"]) == 0
    clean = tmp_path / "clean"
    shutil.copytree(data_dir / "bronze", clean / "bronze")
    os.environ["PIPELINE_DATA_DIR"] = str(clean)
    try:
        build(full_refresh=True)
    finally:
        os.environ["PIPELINE_DATA_DIR"] = str(data_dir)
    expected = silver_files(clean)
    assert len(expected) >= 9

    rng = random.Random(7)
    schedule = [(mode, rng.randrange(1, 8), rng.uniform(0, 0.05)) for mode in ("first", "first", "full", "full")]
    landed = 0
    for n, (mode, k, jitter) in enumerate(schedule):
        root = tmp_path / f"chaos{n}"
        shutil.copytree(data_dir / "bronze", root / "bronze")
        env = dict(os.environ, PIPELINE_DATA_DIR=str(root))
        if mode == "full":  # a complete silver first, then a full refresh of it is killed
            assert subprocess.run([sys.executable, "-m", "etl", "silver"], cwd=PROJECT_ROOT, env=env,
                                  capture_output=True, timeout=300).returncode == 0
        started = time.time()
        proc = subprocess.Popen([sys.executable, "-m", "etl", "silver", *(["--full-refresh"] if mode == "full" else [])],
                                cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:  # until k partition files of this run are written
            if _written_since(root / "silver", started) >= k:
                break
            time.sleep(0.005)
        time.sleep(jitter)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            landed += 1
        proc.wait(timeout=30)
        for data in silver_files(root).values():  # whatever is visible is a whole Parquet file
            pq.read_metadata(pa.BufferReader(data))
        rerun = subprocess.run([sys.executable, "-m", "etl", "silver"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                               text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert silver_files(root) == expected, f"kill point {n} ({mode}, after {k} files)"
    assert landed >= 2, "the seeded points fell inside the builds"


def test_a_corrupt_bronze_file_read_only_as_context_is_set_aside_and_the_build_equals_a_clean_one(data_dir):
    """Late data for day 4 rebuilds days 3 and 4, which read day 2 as the quality gate's context only. Day 2's file
    went bad since it was built: the build must set it aside (naming it) and leave silver as a clean build of the
    same bronze leaves it, not skip it silently (day 2's bars still built from rows bronze no longer reads)."""
    from tests.etl.test_integrity import flip_page_bytes

    write_batch(data_dir, minute_candles("BTC-USD", T0, 4 * 1440), "b1", T0 + timedelta(days=4))
    build(now=FUTURE)
    day1 = next(f for f in Lake(str(data_dir)).files("bronze/candles") if "date=2026-01-05" in f)
    flip_page_bytes(data_dir / day1)
    late = minute_candles("BTC-USD", T0, 4 * 1440).iloc[[3 * 1440 + 600]]
    write_batch(data_dir, late.assign(volume=9.0), "b2", T0 + timedelta(days=5))

    summary = build(now=FUTURE)
    assert summary.bad_files == [f"bronze/quarantined_files/{day1[len('bronze/'):]}"] and summary.batches == 1
    assert day1 not in Lake(str(data_dir)).files("bronze/candles")
    incremental = silver_files(data_dir)
    bars_5m, bars_1d = read_bars("5m"), read_bars("1d")
    assert build(full_refresh=True, now=FUTURE).bad_files == []
    assert silver_files(data_dir) == incremental
    assert read_bars("5m").equals(bars_5m) and read_bars("1d").equals(bars_1d)
    assert "2026-01-05" not in set(bars_1d["price_date"].dt.strftime("%Y-%m-%d"))
