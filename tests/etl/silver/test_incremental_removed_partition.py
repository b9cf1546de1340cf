"""Review: an incremental silver build misses a bronze partition whose files were all removed (etl/silver/incremental.py
_plan), so incremental != full refresh. Fails on the code it was written against."""

from __future__ import annotations

import shutil
from datetime import date, timedelta

from etl import candles
from etl.compaction import compact
from etl.lake import Lake
from etl.silver import build, read_bars
from etl.storage import get_store
from tests.etl.silver.test_incremental import FUTURE, T0, minute_candles, silver_files, write_batch
from tests.etl.test_integrity import flip_page_bytes


def test_a_bronze_partition_quarantined_whole_by_compaction_leaves_silver_as_a_full_refresh_leaves_it(
        data_dir, tmp_path, monkeypatch):
    """incremental.py's docstring: the partitions to rebuild come from "the files added or removed since the bronze
    version it last processed (... a compaction or a quarantined file is a change too)", and "a full refresh writes
    the same bytes as incremental runs". `python -m etl compact` quarantines every file of a partition (both
    corrupt) and removes them from bronze; the next incremental build drops the partition from its plan
    (`& parts.keys()`: it has no bronze file left) and never removes its silver bars, which a full refresh does."""
    b1 = write_batch(data_dir, minute_candles("ETH-USD", T0, 600), "b1", T0 + timedelta(days=1))
    write_batch(data_dir, minute_candles("ETH-USD", T0 + timedelta(days=1), 600, seed=1), "b0", T0 + timedelta(days=2))
    build(now=FUTURE)
    b2 = write_batch(data_dir, minute_candles("ETH-USD", T0 + timedelta(minutes=300), 300, seed=2), "b2",
                     T0 + timedelta(days=3))
    for rel in (*b1, *b2):           # both files of 2026-01-05 go bad on disk (bit rot, a bad copy)
        flip_page_bytes(data_dir / rel)
    done = compact(before=date(2026, 1, 10))
    assert len(done.bad_files) == 2                                          # both quarantined, out of bronze
    assert not [f for f in candles.files(Lake.of(get_store())) if "date=2026-01-05" in f]

    build(now=FUTURE)                                                       # incremental: takes in the change
    incremental = silver_files(data_dir)
    full = tmp_path / "full"
    shutil.copytree(data_dir / "bronze", full / "bronze")
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(full))
    build(full_refresh=True, now=FUTURE)
    refreshed = silver_files(full)
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(data_dir))
    days = sorted({str(d)[:10] for d in read_bars("5m")["bucket_start"]})
    assert sorted(incremental) == sorted(refreshed), (
        f"incremental silver holds {sorted(set(incremental) - set(refreshed))} that the full refresh of the same "
        f"bronze does not; 5-minute bars on days {days}")
