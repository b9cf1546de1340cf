"""Bronze candle table (etl/candles.py): compaction."""

from __future__ import annotations

import threading
from datetime import timedelta

from etl import candles
from etl.lake import Lake, LakeConflict
from etl.storage import get_store
from tests.etl.silver.test_incremental import T0, minute_candles, write_batch


def test_two_compactions_of_the_same_files_do_not_both_commit(data_dir):
    """docs/commit_protocol.md "Compaction": "two compactions of the same files conflict and the loser retries";
    readers see "before the commit the old files, after it the compacted ones; never both". compact() lists the
    partition's files first, but commit_files builds the RemoveActions from the table it loads at commit time
    (lake.py:204-209): files a faster compaction already removed are silently dropped from the removal, there is no
    conflict, and the slower compaction's file is added next to the faster one's: every row of the partition twice."""
    keys = []
    for i in range(16):
        day = T0 + timedelta(days=i)
        write_batch(data_dir, minute_candles("ETH-USD", day, 100), f"a{i}", day + timedelta(days=1))
        write_batch(data_dir, minute_candles("ETH-USD", day + timedelta(minutes=50), 100, seed=1), f"b{i}",
                    day + timedelta(days=2))
        keys.append(("ETH-USD", day.date().isoformat()))
    store, lake = get_store(), Lake.of(get_store())
    start, outcomes = threading.Barrier(2), []

    def run(partitions: list[tuple[str, str]]) -> None:  # silver's fold of one day, the nightly compaction of all
        start.wait()
        try:
            outcomes.append(candles.compact(store, lake, partitions, {}).partitions)
        except LakeConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=run, args=(ks,)) for ks in (keys[:1], keys)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    first = candles.by_partition(candles.files(lake))[keys[0]]
    rows = sum(store.read_parquet(rel).num_rows for rel in first)
    assert (len(first), rows) == (1, 150), (
        f"outcomes {outcomes}: partition {keys[0]} holds {len(first)} files, {rows} rows (150 distinct candles): "
        f"{sorted(p.rsplit('/', 1)[-1] for p in first)}")
