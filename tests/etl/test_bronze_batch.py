"""Review: a batch id retried while its first attempt is still running (an Airflow retry beside a zombie task) is
committed twice. Fails on the code it was written against."""

from __future__ import annotations

import threading

from etl import candles
from etl.bronze import ingest
from etl.lake import Lake
from etl.storage import get_store
from tests.etl.test_bronze import END, START, _settings


def test_a_batch_id_ingested_twice_at_once_commits_once(tmp_path, simulator):
    """docs/commit_protocol.md (bronze): "a retry of the same batch_id rewrites the same file names and commits once".
    ingest() checks candles.batch() before fetching (bronze.py:318) and commits with an app transaction that
    delta-rs does not check against a concurrent one: both attempts pass the check and both commit. The second
    attempt's atomic rename also replaces the bytes of a file the first commit recorded a SHA-256 for (ingested_at
    differs), so that commit's digest no longer matches the file it names."""
    settings = _settings(tmp_path, simulator)
    lake, twice = Lake.of(get_store(settings), settings), {}
    for batch in ("b-retried-1", "b-retried-2", "b-retried-3"):   # a race: three tries
        start = threading.Barrier(2)

        def run(batch: str = batch, start: threading.Barrier = start) -> None:
            start.wait()
            ingest(["BTC-USD", "ETH-USD"], START, END, settings=settings, batch_id=batch)

        threads = [threading.Thread(target=run) for _ in range(2)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        versions = [c["version"] for c in lake.commits(candles.CANDLES_DIR, None, lake.version(candles.CANDLES_DIR))
                    if c.get(candles.BATCH_ID) == batch]
        if len(versions) != 1:
            twice[batch] = versions
    assert twice == {}, f"batches committed more than once, at versions: {twice}"
