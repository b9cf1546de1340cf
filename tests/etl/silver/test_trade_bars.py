"""Silver trade bars from bronze trades written before the collector validated its fields: a partition named by a
bad field (a product id with a trailing newline, the date 9999-99-99) never becomes a silver partition."""

from __future__ import annotations

import logging

from etl.silver.trade_bars import TRADE_BARS_DIR, build_trade_bars
from etl.storage import Store
from etl.stream.sinks import BronzeSink, MicroBatch


def test_bronze_partitions_named_by_bad_fields_are_skipped_not_built(data_dir, caplog):
    batch = MicroBatch("20260101T000000000000Z-aaaa-000001")
    for i, (product, day, when) in enumerate([("BTC-USD", "2026-01-01", "2026-01-01T00:00:01Z"),
                                             ("BTC-USD\n", "2026-01-01", "2026-01-01T00:00:02Z"),
                                             ("BTC-USD", "9999-99-99", "9999-99-99T00:00:00Z")]):
        batch.add_trade(product, day, (str(i), "100.0", "0.5", "BUY", when, "update", "market_trades", when, "",
                                       i, "c1", 1767225600.0, None))
    BronzeSink(Store.from_uri(str(data_dir))).write(batch)
    assert len(list((data_dir / "bronze" / "trades").glob("*/*"))) == 3
    with caplog.at_level(logging.WARNING, logger="etl.silver.trade_bars"):
        summary = build_trade_bars()
    root = data_dir / TRADE_BARS_DIR
    assert sorted(str(p.relative_to(root)) for p in root.glob("*/*")) == ["product_id=BTC-USD/date=2026-01-01"]
    assert summary.partitions == 1 and summary.trades_in == 1
    assert "2 bronze file(s) outside a valid product_id=/date= partition skipped" in caplog.text
