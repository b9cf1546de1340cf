"""Silver liquidity against a hand computation: time-weighted spread, depth within 10/50/100 bp of mid, the
bucket's last book kept whole, one-sided snapshots left out."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from etl.silver.liquidity import build_liquidity
from etl.storage import get_store
from etl.stream.sinks import BronzeSink, MicroBatch

B = pd.Timestamp("2026-12-01T12:00:00Z").timestamp()   # a 5-minute bucket start


def write_snapshots(snapshots, batch_id="b1"):
    """snapshots: (book_time_s, bids [(price, qty)], asks [(price, qty)]); snapshot_at = book_time + 0.1."""
    batch = MicroBatch(batch_id)
    for t, bids, asks in snapshots:
        for side, levels in (("bid", bids), ("offer", asks)):
            for i, (p, q) in enumerate(levels, 1):
                batch.add_book("BTC-USD", "2026-12-01", (side, i, p, q, t, t + 0.1, 7, "c"))
    BronzeSink(get_store()).write(batch)


def test_time_weighted_spread_and_depth_by_hand(data_dir):
    write_snapshots([
        (B, [(99.9, 1), (99.5, 2), (99.0, 3)], [(100.1, 1), (100.5, 2), (101.0, 4)]),  # mid 100, 20 bp
        (B + 60, [(99.8, 2)], [(100.2, 1), (100.4, 1)]),                               # mid 100, 40 bp
        (B + 310, [(198.0, 1)], []),                                                   # one-sided: left out
        (B + 320, [(199.0, 1)], [(201.0, 1)]),                                         # mid 200, 100 bp
    ])
    summary = build_liquidity()
    assert (summary.snapshots, summary.one_sided, summary.buckets, summary.partitions) == (4, 1, 2, 1)
    out = pq.read_table(data_dir / _current("BTC-USD", "2026-12-01"))
    first, second = out.to_pandas().to_dict("records")
    # the first snapshot holds 60 s, the second the bucket's remaining 240 s
    assert first["n_snapshots"] == 2 and first["spread_bps"] == pytest.approx((20 * 60 + 40 * 240) / 300)
    by_hand = {"bid_depth_10bp": (1, 0), "bid_depth_50bp": (3, 2), "bid_depth_100bp": (6, 2),
               "ask_depth_10bp": (1, 0), "ask_depth_50bp": (3, 2), "ask_depth_100bp": (7, 2)}
    for column, (a, b) in by_hand.items():
        assert first[column] == pytest.approx((a * 60 + b * 240) / 300), column
    assert first["reach_bps"] == pytest.approx(20.0) and first["mid"] == pytest.approx(100.0)
    assert list(first["bid_prices"]) == [99.8] and list(first["ask_quantities"]) == [1.0, 1.0]  # the last book
    assert second["n_snapshots"] == 1 and second["spread_bps"] == pytest.approx(100.0)
    assert second["bucket_start"] == pd.Timestamp(B + 300, unit="s", tz="UTC")


def test_incremental_takes_new_files_only_and_rebuilds_the_partition(data_dir):
    write_snapshots([(B, [(99.9, 1)], [(100.1, 1)])])
    assert build_liquidity().files == 1
    assert build_liquidity().files == 0          # nothing new
    write_snapshots([(B + 150, [(99.8, 1)], [(100.2, 1)])], "b2")
    summary = build_liquidity()
    assert (summary.files, summary.buckets) == (1, 1)
    out = pq.read_table(data_dir / _current("BTC-USD", "2026-12-01"))
    row = out.to_pandas().iloc[0]
    assert row["n_snapshots"] == 2 and row["spread_bps"] == pytest.approx((20 * 150 + 40 * 150) / 300)


def _current(product: str, day: str) -> str:
    """The partition's file in the silver Delta table's latest version (earlier builds' files stay beside it)."""
    from etl.lake import Lake
    from etl.silver import increments
    from etl.silver.liquidity import LIQUIDITY_DIR
    from etl.storage import get_store

    return increments.partition_file(Lake.of(get_store()), LIQUIDITY_DIR, product, day)


def test_a_crossed_book_from_the_feed_is_left_out_not_a_negative_spread(data_dir, monkeypatch):
    """Over a real WebSocket: a level2 update that adds a bid above the best offer (the removal it implies never
    came) leaves the collector's book crossed; a crossed snapshot has no spread (it would be negative and lower
    the liquidity-adjusted VaR's spread cost): it is left out and counted, as a one-sided one."""
    import time

    from etl.stream.collector import collect
    from tests.etl.stream.test_collector import ScriptedServer, _iso, _message

    monkeypatch.setenv("PIPELINE_STREAM_BOOK_SNAPSHOT_S", "0.2")
    t = _iso(time.time())

    def l2(kind, seq, *levels):
        return _message("l2_data", [{"type": kind, "product_id": "BTC-USD", "updates": [
            {"side": side, "event_time": t, "price_level": price, "new_quantity": qty}
            for side, price, qty in levels]}], t, seq)

    script = [l2("snapshot", 0, ("bid", "100.00", "1.0"), ("offer", "101.00", "1.0")),
              l2("update", 1, ("bid", "102.00", "1.0"))]
    server = ScriptedServer([script])
    try:
        collect(["BTC-USD"], seconds=1.0, url=server.url, validate=False)
    finally:
        server.close()
    summary = build_liquidity()
    path = _current("BTC-USD", t[:10])
    spreads = pq.read_table(data_dir / path).column("spread_bps").to_pylist() if path else []
    assert all(s > 0 for s in spreads), spreads
    assert summary.snapshots >= 2 and summary.crossed == summary.snapshots and summary.buckets == 0
    assert "crossed" in str(summary)


def test_a_corrupt_bronze_book_file_is_set_aside_and_the_day_built_from_the_rest(data_dir):
    """Streamed snapshots cannot be fetched again: an unreadable file stops no build; it is set aside with its
    reason, taken out of the table, and the day is built from the other snapshots (a rerun: the same)."""
    import json

    from etl.lake import Lake
    from tests.etl.test_integrity import flip_page_bytes

    write_snapshots([(B, [(99.9, 1)], [(100.1, 1)])])
    write_snapshots([(B + 150, [(99.8, 1)], [(100.2, 1)])], "b2")
    bad = next(f for f in Lake.of(get_store()).files("bronze/order_book") if f.endswith("/b2.parquet"))
    flip_page_bytes(data_dir / bad, "price")
    summary = build_liquidity()
    moved = f"bronze/quarantined_files/{bad[len('bronze/'):]}"
    assert summary.bad_files == [moved] and moved in str(summary) and not (data_dir / bad).exists()
    assert json.loads((data_dir / f"{moved}.reason.json").read_text())["file"] == bad
    assert Lake.of(get_store()).files("bronze/order_book") == [bad.replace("b2", "b1")]
    row = pq.read_table(data_dir / _current("BTC-USD", "2026-12-01")).to_pandas().iloc[0]
    assert row["n_snapshots"] == 1 and row["spread_bps"] == pytest.approx(20.0)   # b1's snapshot only
    again = build_liquidity(full_refresh=True)
    assert again.bad_files == [] and again.snapshots == 1
