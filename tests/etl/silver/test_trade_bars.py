"""Silver trade bars from bronze trades written before the collector validated its fields: a partition named by a
bad field (a product id with a trailing newline, the date 9999-99-99) never becomes a silver partition."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest

from etl.silver.trade_bars import TRADE_BARS_DIR, build_trade_bars
from etl.storage import Store
from etl.stream.sinks import BronzeSink, MicroBatch
from tests.etl.stream.test_collector import live  # noqa: F401  (the fixture)


def test_bronze_partitions_named_by_bad_fields_are_skipped_not_built(data_dir, caplog):
    batch = MicroBatch("20260101T000000000000Z-aaaa-000001")
    for i, (product, day, when) in enumerate([("BTC-USD", "2026-01-01", "2026-01-01T00:00:01Z"),
                                             ("BTC-USD\n", "2026-01-01", "2026-01-01T00:00:02Z"),
                                             ("BTC-USD", "9999-99-99", "9999-99-99T00:00:00Z")]):
        batch.add_trade(product, day, (str(i), "100.0", "0.5", "BUY", when, "update", "market_trades", when, "",
                                       i, "c1", 1767225600.0, None))
    BronzeSink(Store.from_uri(str(data_dir))).write(batch)
    assert len(list((data_dir / "bronze" / "trades").glob("product_id=*/*"))) == 3  # the partitions (not the log)
    with caplog.at_level(logging.WARNING, logger="etl.silver.increments"):
        summary = build_trade_bars()
    root = data_dir / TRADE_BARS_DIR
    assert sorted(str(p.relative_to(root)) for p in root.glob("product_id=*/*")) == ["product_id=BTC-USD/date=2026-01-01"]
    assert summary.partitions == 1 and summary.trades_in == 1
    assert "2 bronze file(s) outside a valid product_id=/date= partition skipped" in caplog.text


def _trades(batch_id: str, rows: list[tuple[str, str, str]]) -> MicroBatch:
    """A micro-batch of trades (product, trade id, time) at 100.0 for 0.5 each."""
    batch = MicroBatch(batch_id)
    for i, (product, trade_id, when) in enumerate(rows):
        batch.add_trade(product, when[:10], (trade_id, "100.0", "0.5", "BUY", when, "update", "market_trades", when,
                                             "", i, "c1", 1767225600.0, None))
    return batch


def test_a_build_reads_only_the_bronze_trades_committed_since_the_version_its_commit_recorded(data_dir):
    from etl.lake import Lake
    from etl.silver.increments import BRONZE_VERSION
    from tests.support.delta_reader import EXTENSION, duckdb_rows

    store = Store.from_uri(str(data_dir))
    sink, lake = BronzeSink(store), Lake.of(store)
    sink.write(_trades("b1", [("BTC-USD", "1", "2026-01-01T00:00:01Z"), ("ETH-USD", "2", "2026-01-01T00:00:02Z")]))
    first = build_trade_bars()
    assert (first.files, first.partitions, first.trades_in) == (2, 2, 2)
    assert lake.metadata(TRADE_BARS_DIR, BRONZE_VERSION)[1] == str(lake.version("bronze/trades")) == "1"
    assert not (data_dir / "silver/_state/trade_files.json").exists()     # the version is in silver's own commit

    sink.write(_trades("b2", [("BTC-USD", "3", "2026-01-01T00:06:00Z")]))
    second = build_trade_bars()   # only BTC's partition changed: only its new file is news, its day is rebuilt
    assert (second.files, second.partitions, second.trades_in) == (1, 1, 2)
    assert lake.metadata(TRADE_BARS_DIR, BRONZE_VERSION)[1] == "2"
    version = lake.version(TRADE_BARS_DIR)
    assert build_trade_bars().files == 0 and lake.version(TRADE_BARS_DIR) == version   # nothing new, no commit

    incremental = lake.read(TRADE_BARS_DIR).sort_by([("product_id", "ascending"), ("bucket_start", "ascending")])
    assert len(lake.files(TRADE_BARS_DIR)) == 2   # one file per partition: the rebuilt day's old file removed
    refreshed = build_trade_bars(full_refresh=True)
    assert (refreshed.files, refreshed.partitions) == (3, 2)
    again = lake.read(TRADE_BARS_DIR).sort_by([("product_id", "ascending"), ("bucket_start", "ascending")])
    assert again.equals(incremental) and incremental.num_rows == 3   # BTC: two buckets, ETH: one
    if EXTENSION:
        assert len(duckdb_rows(str(data_dir / TRADE_BARS_DIR), exclude=())) == 3


def test_a_bar_whose_trades_a_sequence_gap_may_have_lost_is_not_complete(live, data_dir):  # noqa: F811
    """Over the simulator's real feed with dropped messages (a dropped `market_trades` update loses its trades for
    good: only level2 is resubscribed), every bar marked complete holds exactly the model's trades of its bucket
    (a clean run's bar); a bar the lost messages cut into is built but not complete."""
    import pandas as pd

    from etl.simulator.price_model import SyntheticSource
    from etl.simulator.trades import trades_between
    from etl.stream.collector import collect

    live(speed=120.0, ws_drop_rate=0.05)
    summary = collect(["BTC-USD"], seconds=6)
    assert summary.gaps["sequence"] >= 1
    build_trade_bars()
    bars = bronze_table(data_dir, TRADE_BARS_DIR)
    source = SyntheticSource(42, ("BTC-USD",))
    short = []
    for bar in bars.itertuples():
        start = int(bar.bucket_start.value // 1000)
        model = trades_between(source, "BTC-USD", start - 1, start + 300_000_000 - 1)
        lost = len(model) - bar.n_trades
        if bar.is_complete:
            assert lost == 0 and bar.volume == pd.Series(model.units).sum() / 1e8, (bar.bucket_start, lost)
        short.append(lost > 0)
    assert any(short), "no bar lost a trade: the fault did not happen"


def bronze_table(data_dir, rel: str):
    from etl.lake import Lake

    return Lake.of(Store.from_uri(str(data_dir))).read(rel).to_pandas().sort_values("bucket_start")


def test_the_bar_a_stream_starts_inside_is_not_complete(make_simulator, data_dir, monkeypatch):
    """A collector's first trades are the subscription's snapshot (the last 50 trades): when the oldest of them lies
    inside the first minute of a bucket, that bucket's five minutes all have trades, but those before the snapshot
    were never received - the bar is built, not complete (a clean run's bar has them)."""
    import time as _time

    from etl.simulator.price_model import SyntheticSource
    from etl.simulator.trades import trades_between
    from etl.stream.collector import collect

    source = SyntheticSource(42, ("BTC-USD",))
    start = (_time.time() - 1800) // 300 * 300 + 60   # feed clock start: the oldest snapshot trade 20-40 s into a bar
    while True:
        recent = trades_between(source, "BTC-USD", int((start - 3600) * 1e6), int(start * 1e6))
        oldest = recent.time_us[-50] / 1e6
        if 20 <= oldest % 300 <= 40:
            break
        start += 1
    bar = oldest // 300 * 300
    sim = make_simulator(products=("BTC-USD",), rate_limit_rps=1000.0, burst=1000, ws_speed=120.0, ws_start=start)
    monkeypatch.setenv("PIPELINE_STREAM_COMMIT_S", "0.5")
    collect(["BTC-USD"], seconds=6, url=sim.ws_url, validate=False)
    build_trade_bars()
    bars = bronze_table(data_dir, TRADE_BARS_DIR).set_index("bucket_start")
    first = bars.loc[pd.Timestamp(bar, unit="s", tz="UTC")]
    clean = trades_between(source, "BTC-USD", int(bar * 1e6) - 1, int((bar + 300) * 1e6) - 1)
    assert first["n_candles"] == 5 and first["n_trades"] < len(clean)   # the fault: minute 0 partly streamed
    assert not first["is_complete"]
    later = bars[bars.index > pd.Timestamp(bar, unit="s", tz="UTC")]
    assert later["is_complete"].iloc[0]                                   # the next bar, streamed whole, is


def test_a_run_carried_over_midnight_leaves_the_first_bar_complete_a_new_one_does_not(data_dir):
    """The day's first trade came on a run already streaming the day before (same connection, no gap between):
    the 00:00 bar is whole. Came on a connection of its own (the collector started after midnight): it is not."""
    def batch(batch_id: str, conn_today: str) -> MicroBatch:
        b = MicroBatch(batch_id)
        times = ["2026-01-01T23:59:30Z", "2026-01-01T23:59:50Z"] + [
            f"2026-01-02T00:{s // 60:02d}:{s % 60:02d}Z" for s in range(5, 380, 20)]
        for seq, when in enumerate(times):
            conn = "c1" if when < "2026-01-02" else conn_today
            b.add_trade("BTC-USD", when[:10], (f"{seq + 1}", "100.0", "0.5", "BUY", when, "update", "market_trades",
                                              when, "", seq, conn, 1767225600.0 + seq, None))
        return b

    store = Store.from_uri(str(data_dir))
    BronzeSink(store).write(batch("20260102T000000000000Z-aaaa-000001", "c1"))
    build_trade_bars()
    bars = bronze_table(data_dir, TRADE_BARS_DIR)
    first = bars[bars["bucket_start"] == pd.Timestamp("2026-01-02T00:00:00Z")].iloc[0]
    assert first["n_candles"] == 5 and first["is_complete"]
    # the same trades again on a new connection: c1's run still spans midnight, whichever row comes first
    BronzeSink(store).write(batch("20260102T000000000000Z-aaaa-000002", "c2"))
    build_trade_bars(full_refresh=True)
    bars = bronze_table(data_dir, TRADE_BARS_DIR)
    assert bars[bars["bucket_start"] == pd.Timestamp("2026-01-02T00:00:00Z")]["is_complete"].iloc[0]


def test_a_stream_started_after_midnight_leaves_its_first_bar_incomplete(data_dir):
    batch = MicroBatch("20260102T000000000000Z-aaaa-000001")
    for seq, s in enumerate(range(5, 380, 20)):
        when = f"2026-01-02T00:{s // 60:02d}:{s % 60:02d}Z"
        batch.add_trade("BTC-USD", "2026-01-02", (f"{seq + 1}", "100.0", "0.5", "BUY", when, "snapshot",
                                                  "market_trades", when, "", seq, "c2", 1767225600.0 + seq, None))
    BronzeSink(Store.from_uri(str(data_dir))).write(batch)
    assert build_trade_bars().cut == 1
    bars = bronze_table(data_dir, TRADE_BARS_DIR)
    first = bars[bars["bucket_start"] == pd.Timestamp("2026-01-02T00:00:00Z")].iloc[0]
    assert first["n_candles"] == 5 and not first["is_complete"]


def test_a_bar_missing_a_rejected_trade_is_not_complete(data_dir, monkeypatch):
    """Over a real WebSocket: one trade of a `market_trades` update breaks a field rule (price "0") and is kept as
    a reject row, never a bar's trade; its bar has all five minutes traded, but the exchange reported a trade it
    does not hold: built, not complete (a hole where the rejected message was)."""
    import time as _time

    from etl.stream.collector import collect
    from tests.etl.stream.test_collector import ScriptedServer, _iso, _message, _trade

    monkeypatch.setenv("PIPELINE_STREAM_COMMIT_S", "0.5")
    bar = (_time.time() - 3600) // 300 * 300
    t = _iso(_time.time())
    offsets = [-10, 5, 65, 125, 185, 245, 290, 310]
    script = [_message("market_trades", [{"type": "update", "trades": [_trade(str(i + 1), _iso(bar + s))]}], t, i)
              for i, s in enumerate(offsets)]
    bad = _message("market_trades", [{"type": "update", "trades": [_trade("50", _iso(bar + 250)),
                                                                   _trade("51", _iso(bar + 251), price="0")]}],
                   t, len(offsets))
    script.insert(6, bad)
    script = [json.dumps({**json.loads(m), "sequence_num": i}) for i, m in enumerate(script)]
    server = ScriptedServer([script])
    try:
        summary = collect(["BTC-USD"], seconds=1.5, url=server.url, validate=False)
    finally:
        server.close()
    assert summary.rejects == 1 and summary.trades == len(offsets) + 1
    build_trade_bars()
    bars = bronze_table(data_dir, TRADE_BARS_DIR).set_index("bucket_start")
    row = bars.loc[pd.Timestamp(bar, unit="s", tz="UTC")]
    assert row["n_trades"] == 7 and row["n_candles"] == 5
    assert not row["is_complete"]


def test_forced_disconnects_lose_nothing_count_nothing_twice_and_keep_bars_complete(live, data_dir):  # noqa: F811
    """The reconnects' trade snapshots span every disconnect: the repeated trades are dropped as duplicates, each
    closed bar holds exactly a clean run's trades (the model's) and stays complete - no false hole."""
    from etl.simulator.price_model import SyntheticSource
    from etl.simulator.trades import trades_between
    from etl.stream.collector import collect

    live(speed=120.0, ws_disconnect_every=1.0)
    summary = collect(["BTC-USD"], seconds=7)
    assert summary.gaps["disconnect"] >= 3
    built = build_trade_bars()
    assert built.duplicates > 0
    bars = bronze_table(data_dir, TRADE_BARS_DIR)
    source = SyntheticSource(42, ("BTC-USD",))
    closed = bars.iloc[1:-1]                  # the first and last buckets are only partly streamed
    assert len(closed) >= 1 and closed["is_complete"].all()
    for bar in closed.itertuples():
        start = int(bar.bucket_start.value // 1000)
        model = trades_between(source, "BTC-USD", start - 1, start + 300_000_000 - 1)
        assert bar.n_trades == len(model) and bar.volume == pd.Series(model.units).sum() / 1e8


def test_large_trade_sizes_add_up_to_their_volume_not_a_wrapped_negative_one(data_dir):
    """Sizes were counted in int64 units of 1e-8: a trade of 1e11 (a meme coin's $1M) or two of 6e10 in one
    bucket are 1e19 and 1.2e19 units, past int64's 9.2e18, and the bar's volume wrapped to a negative (or
    absurd) figure. Each passes the collector's checks (etl/stream/validate.py). A size that is no finite number
    (bronze written by an older collector) is invalid, as a size of 0 is."""
    from etl.stream.validate import trade_problem

    rows = [("1", "0.00001", "60000000000", "2026-01-01T00:00:10Z"),
            ("2", "0.000011", "60000000000.5", "2026-01-01T00:01:10Z"),   # +10%: a price, not a bad print
            ("3", "0.00001", "100000000000", "2026-01-01T00:05:10Z"),
            ("4", "0.00001", "0.00000001", "2026-01-01T00:06:10Z"),
            ("5", "0.00001", "inf", "2026-01-01T00:07:10Z")]
    batch = MicroBatch("20260101T000000000000Z-aaaa-000001")
    for i, (trade_id, price, size, when) in enumerate(rows):
        batch.add_trade("PEPE-USD", when[:10], (trade_id, price, size, "BUY", when, "update", "market_trades", when,
                                                "", i, "c1", 1767225600.0, None))
    assert [trade_problem({"product_id": "PEPE-USD", "trade_id": t, "price": p, "size": s, "side": "BUY",
                           "time": w}, ("2025-12-31T00:00:00", "2026-01-02T00:00:00")) for t, p, s, w in rows[:4]] \
        == [None] * 4
    BronzeSink(Store.from_uri(str(data_dir))).write(batch)
    summary = build_trade_bars()
    assert summary.invalid == 1
    bars = bronze_table(data_dir, TRADE_BARS_DIR)
    assert bars["volume"].tolist() == [120000000000.5, 100000000000.00000001]
    assert bars["vwap"].iloc[0] == pytest.approx((0.00001 * 6e10 + 0.000011 * 60000000000.5) / 120000000000.5,
                                                 rel=1e-12)
    assert bars["vwap"].iloc[1] == pytest.approx(0.00001, rel=1e-12)


def test_trades_of_one_microsecond_keep_the_exchange_order_across_a_trade_id_digit_boundary(data_dir):
    """Trade ids are increasing integers sent as text: sorted as text, "1000" came before "999", so of two trades in
    the same microsecond (one taker order filling two makers) the later became the bar's open and the earlier its
    close."""
    rows = [("998", "100.0", "2026-01-01T00:00:00.000001Z"), ("999", "101.0", "2026-01-01T00:04:59.500000Z"),
            ("1000", "102.0", "2026-01-01T00:04:59.500000Z"),   # the bar's last trade: its close
            ("9999", "103.0", "2026-01-01T00:05:00.000001Z"), ("10000", "104.0", "2026-01-01T00:05:00.000001Z"),
            ("10001", "105.0", "2026-01-01T00:06:00Z")]
    batch = MicroBatch("20260101T000000000000Z-aaaa-000001")
    for i, (trade_id, price, when) in enumerate(rows):
        batch.add_trade("BTC-USD", when[:10], (trade_id, price, "0.5", "BUY", when, "update", "market_trades", when,
                                               "", i, "c1", 1767225600.0, None))
    BronzeSink(Store.from_uri(str(data_dir))).write(batch)
    build_trade_bars()
    bars = bronze_table(data_dir, TRADE_BARS_DIR)
    assert bars[["open", "close"]].values.tolist() == [[100.0, 102.0], [103.0, 105.0]]


def _minutes(batch: MicroBatch, product: str, conn: str, first: int, last: int) -> MicroBatch:
    """Trades of `product` every 20 s over the seconds [first, last) of 2026-01-01, one run on `conn`."""
    for s in range(first, last, 20):
        when = f"2026-01-01T00:{s // 60:02d}:{s % 60:02d}Z"
        batch.add_trade(product, "2026-01-01", (f"{s}", f"{100 + s % 7}.5", "0.5", "BUY", when, "update",
                                                "market_trades", when, "", s, conn, 1767225600.0 + s, None))
    return batch


def test_a_corrupt_bronze_trades_file_is_set_aside_and_its_day_is_never_complete(data_dir, caplog):
    """Streamed trades cannot be fetched again: a trades file that does not read whole is set aside with its
    reason and taken out of the table, and the build goes on; the day it belonged to lost trades at unknown times,
    so none of its bars is complete (a rerun, a full refresh: the same); the other partitions are a clean build's."""
    from etl.lake import Lake
    from tests.etl.test_integrity import flip_page_bytes

    store = Store.from_uri(str(data_dir))
    sink, lake = BronzeSink(store), Lake.of(store)
    for batch_id, (first, last) in (("b1", (5, 900)), ("b2", (905, 1800))):
        batch = MicroBatch(f"20260101T000000000000Z-aaaa-{batch_id}")
        sink.write(_minutes(_minutes(batch, "BTC-USD", "c1", first, last), "ETH-USD", "c2", first, last))
    build_trade_bars()
    clean = bronze_table(data_dir, TRADE_BARS_DIR)
    assert clean["is_complete"].sum() >= 4   # both products: complete bars

    bad = next(f for f in lake.files("bronze/trades") if "BTC-USD" in f and f.endswith("b2.parquet"))
    flip_page_bytes(data_dir / bad, "sequence_num")
    with caplog.at_level(logging.ERROR, logger="etl.candles"):
        summary = build_trade_bars(full_refresh=True)   # reads every file: the corrupt one too
    moved = f"bronze/quarantined_files/{bad[len('bronze/'):]}"
    assert summary.bad_files == [moved] and moved in str(summary)
    assert json.loads((data_dir / f"{moved}.reason.json").read_text())["file"] == bad
    assert (data_dir / moved).exists() and not (data_dir / bad).exists() and bad not in lake.files("bronze/trades")
    assert "cannot be fetched again" in caplog.text and "backup" in caplog.text

    bars = bronze_table(data_dir, TRADE_BARS_DIR)
    btc, eth = (bars[bars["product_id"] == p].reset_index(drop=True) for p in ("BTC-USD", "ETH-USD"))
    assert list(btc["bucket_start"]) == list(pd.date_range("2026-01-01", periods=3, freq="5min", tz="UTC"))  # b1's
    assert not btc["is_complete"].any() and summary.cut >= 3
    pd.testing.assert_frame_equal(eth, clean[clean["product_id"] == "ETH-USD"].reset_index(drop=True))

    for again in (build_trade_bars(), build_trade_bars(full_refresh=True)):   # idempotent: nothing more set aside
        assert again.bad_files == []
        pd.testing.assert_frame_equal(bronze_table(data_dir, TRADE_BARS_DIR).reset_index(drop=True),
                                      bars.reset_index(drop=True))
    assert len(list((data_dir / "bronze/quarantined_files").rglob("*.parquet"))) == 1


def test_a_day_whose_only_trades_file_is_corrupt_keeps_no_bar_and_stops_nothing(data_dir):
    from etl.lake import Lake
    from tests.etl.test_integrity import flip_page_bytes

    store = Store.from_uri(str(data_dir))
    BronzeSink(store).write(_minutes(MicroBatch("20260101T000000000000Z-aaaa-b1"), "BTC-USD", "c1", 5, 900))
    build_trade_bars()
    assert len(bronze_table(data_dir, TRADE_BARS_DIR)) == 3
    flip_page_bytes(data_dir / Lake.of(store).files("bronze/trades")[0], "sequence_num")
    summary = build_trade_bars(full_refresh=True)
    assert len(summary.bad_files) == 1 and summary.bars == 0 and Lake.of(store).files("bronze/trades") == []
    assert len(bronze_table(data_dir, TRADE_BARS_DIR)) == 0   # the bars built from the lost file went with it


def test_two_builds_at_once_of_a_new_partition_commit_its_bars_once(data_dir, monkeypatch):
    """Two silver builds at once (the intraday DAG's and a backfill's or a manual `python -m etl silver`), both
    taking in a partition new to silver (every partition of a new UTC day): each found no previous file to remove,
    so both appends committed and the partition held two files, every bar twice, for good (the next build found
    nothing new). docs/commit_protocol.md: a build commits its partitions whole or fails with LakeConflict."""
    import threading

    from etl.lake import Lake, LakeConflict

    store = Store.from_uri(str(data_dir))
    sink, lake = BronzeSink(store), Lake.of(store)
    sink.write(_trades("b0", [("ETH-USD", "0", "2025-12-31T00:00:01Z")]))
    build_trade_bars()
    sink.write(_trades("b1", [("BTC-USD", "1", "2026-01-01T00:00:01Z")]))   # a partition new to silver
    commit, both_written = Lake.commit_files, threading.Barrier(2)

    def at_once(self, rel, *args, **kwargs):                  # both builds wrote their file before either commits
        if rel == TRADE_BARS_DIR:
            both_written.wait(timeout=60)
        return commit(self, rel, *args, **kwargs)

    monkeypatch.setattr(Lake, "commit_files", at_once)
    outcomes = []

    def build() -> None:
        try:
            outcomes.append(build_trade_bars().partitions)
        except LakeConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    monkeypatch.setattr(Lake, "commit_files", commit)
    assert sorted(outcomes, key=str) == [1, "conflict"]
    rows = lake.read(TRADE_BARS_DIR).to_pandas()
    assert sorted(rows["product_id"]) == ["BTC-USD", "ETH-USD"]                # each bar once
    assert build_trade_bars().partitions == 0


def test_a_crash_after_a_corrupt_trades_file_is_set_aside_and_before_the_commit_reruns_to_the_clean_result(
        data_dir, monkeypatch):
    """The corrupt file is taken out of bronze by its own commit, then the build dies before its silver commit:
    the rerun must still rebuild that day (its bars not complete) as a clean build does, not keep the bars built
    before the file was lost as if nothing happened."""
    from etl.lake import Lake
    from etl.silver import increments
    from tests.etl.test_integrity import flip_page_bytes

    store = Store.from_uri(str(data_dir))
    sink, lake = BronzeSink(store), Lake.of(store)
    sink.write(_minutes(_minutes(MicroBatch("20260101T000000000000Z-aaaa-b1"), "BTC-USD", "c1", 5, 900),
                        "ETH-USD", "c2", 5, 900))
    build_trade_bars()
    assert bronze_table(data_dir, TRADE_BARS_DIR)["is_complete"].any()
    sink.write(_minutes(_minutes(MicroBatch("20260101T000000000000Z-aaaa-b2"), "BTC-USD", "c1", 905, 1800),
                        "ETH-USD", "c2", 905, 1800))
    bad = next(f for f in lake.files("bronze/trades") if "BTC-USD" in f and f.endswith("b2.parquet"))
    flip_page_bytes(data_dir / bad, "sequence_num")

    def crash(*args, **kwargs):
        raise RuntimeError("killed before the silver commit")

    with monkeypatch.context() as m:
        m.setattr(increments, "commit", crash)
        with pytest.raises(RuntimeError):
            build_trade_bars()
    assert bad not in lake.files("bronze/trades")   # set aside and taken out of bronze: that commit was made
    build_trade_bars()                              # the rerun
    rerun = bronze_table(data_dir, TRADE_BARS_DIR).sort_values(["product_id", "bucket_start"]).reset_index(drop=True)
    build_trade_bars(full_refresh=True)             # the clean result of the same bronze
    clean = bronze_table(data_dir, TRADE_BARS_DIR).sort_values(["product_id", "bucket_start"]).reset_index(drop=True)
    assert not clean[clean["product_id"] == "BTC-USD"]["is_complete"].any()
    pd.testing.assert_frame_equal(rerun, clean)


def test_a_trade_received_twice_with_different_prices_is_no_bar_s_trade_and_its_bar_is_not_complete(data_dir):
    """A trade id is one trade: a second copy (a reconnect's snapshot, a second collector) that disagrees on its
    price leaves no telling which is the trade. Neither copy makes the bar (its bar is not complete, the conflict
    is counted), not the first received as if it were the trade; an identical repeat is a plain duplicate."""
    store = Store.from_uri(str(data_dir))
    batch = _minutes(MicroBatch("20260101T000000000000Z-aaaa-b1"), "BTC-USD", "c1", 5, 1200)
    for s, price in ((305, "999.5"), (605, f"{100 + 605 % 7}.5")):   # 00:05:05 disagrees, 00:10:05 repeats
        when = f"2026-01-01T00:{s // 60:02d}:{s % 60:02d}Z"
        batch.add_trade("BTC-USD", "2026-01-01", (f"{s}", price, "0.5", "BUY", when, "snapshot", "market_trades",
                                                  when, "", 1000 + s, "c2", 1767226600.0 + s, None))
    BronzeSink(store).write(batch)
    summary = build_trade_bars()
    bars = bronze_table(data_dir, TRADE_BARS_DIR).set_index("bucket_start")
    five, ten = pd.Timestamp("2026-01-01T00:05Z"), pd.Timestamp("2026-01-01T00:10Z")
    assert bars.loc[five, "high"] < 999 and bars.loc[five, "n_trades"] == 14 and not bars.loc[five, "is_complete"]
    assert bars.loc[ten, "is_complete"] and bars.loc[ten, "n_trades"] == 15   # the plain repeat: as clean
    assert bars.loc[ten, "close"] == 100 + 885 % 7 + 0.5
    assert summary.duplicates == 1 and summary.invalid == 2


def _priced(batch_id: str, rows: list[tuple[str, str]], first_id: int = 1, seq: int = 0) -> MicroBatch:
    """A micro-batch of BTC-USD trades (time, price) of 0.5 each on connection c1, ids and sequence numbers from
    first_id and seq."""
    batch = MicroBatch(batch_id)
    for i, (when, price) in enumerate(rows):
        batch.add_trade("BTC-USD", when[:10], (str(first_id + i), price, "0.5", "BUY", when, "update",
                                               "market_trades", when, "", seq + i, "c1", 1767225600.0, None))
    return batch


def _every_30s(start_s: int, stop_s: int, price: str = "100.0") -> list[tuple[str, str]]:
    return [(f"2026-01-01T00:{s // 60:02d}:{s % 60:02d}Z", price) for s in range(start_s, stop_s, 30)]


def test_a_single_bad_trade_print_never_becomes_a_bar_price(data_dir, monkeypatch, caplog):
    """One trade at 100x the price between trades at 100 (a bad print that reverts), as the last trade of the
    00:05 bar: it was that bar's close and high (10,000), and its VWAP 10x, and through PIPELINE_BARS_SOURCE=trades
    the intraday revaluation priced BTC at it. Now it is left out of the bars (the bar is the clean trades'),
    counted and named (product, time, price) in the summary and the log. The latest trade 100x off (the tip of the
    stream, no later trade yet) is held out the same way; a move that stays (100 -> 130) is kept."""
    from etl.settings import get_settings
    from etl.silver import read_bars

    monkeypatch.setenv("PIPELINE_BARS_SOURCE", "trades")
    store = Store.from_uri(str(data_dir))
    rows = _every_30s(10, 290) + [("2026-01-01T00:04:55Z", "10000.0")] + _every_30s(310, 700)
    BronzeSink(store).write(_priced("20260101T000000000000Z-aaaa-000001", rows))
    with caplog.at_level(logging.WARNING, logger="etl.silver.trade_bars"):
        summary = build_trade_bars()
    bars = read_bars("5m", products=["BTC-USD"], settings=get_settings()).set_index("bucket_start")
    first = bars.loc[pd.Timestamp("2026-01-01T00:00:00Z")]
    assert (first["open"], first["high"], first["low"], first["close"], first["vwap"]) == (100.0,) * 5
    assert first["volume"] == 0.5 * 10 and first["n_trades"] == 10          # the 10 clean trades of the bucket
    assert len(summary.suspect) == 1 and "BTC-USD" in summary.suspect[0] and "00:04:55" in summary.suspect[0] \
        and "10000" in summary.suspect[0]
    assert "BTC-USD" in caplog.text and "10000" in caplog.text

    # the tip: the latest trade is 100x off, no later trade to tell a spike from a move: held out
    BronzeSink(store).write(_priced("20260101T000000000000Z-aaaa-000002",
                                    [("2026-01-01T00:12:00Z", "10000.0")], first_id=100, seq=100))
    build_trade_bars()
    bars = read_bars("5m", products=["BTC-USD"], settings=get_settings()).set_index("bucket_start")
    assert bars["high"].max() == 100.0 and bars["close"].iloc[-1] == 100.0

    # a move that stays is a price: kept once a later trade confirms it
    BronzeSink(store).write(_priced("20260101T000000000000Z-aaaa-000003",
                                    [("2026-01-01T00:12:30Z", "130.0"), ("2026-01-01T00:13:00Z", "130.0")],
                                    first_id=200, seq=101))
    BronzeSink(store).write(_priced("20260101T000000000000Z-aaaa-000004",
                                    [("2026-01-01T00:14:00Z", "131.0")], first_id=300, seq=103))
    summary = build_trade_bars()
    bars = read_bars("5m", products=["BTC-USD"], settings=get_settings()).set_index("bucket_start")
    assert bars.loc[pd.Timestamp("2026-01-01T00:10:00Z"), "close"] == 131.0
    assert bars["high"].max() == 131.0                                     # the 00:12 print: still a spike
    assert len(summary.suspect) == 2


def test_a_bad_first_trade_of_the_day_never_becomes_a_bar_price(data_dir):
    """The day's first trade 100x off, alone in the 00:00 bar, the next trades at 100: with no earlier trade in its
    partition the spike rule could not judge it, and it was the 00:00 bar's close. It is held out as the candle
    gate holds out an unanchored first candle (its next trade jumps beyond the floor)."""
    store = Store.from_uri(str(data_dir))
    rows = [("2026-01-01T00:00:05Z", "10000.0")] + _every_30s(310, 600)
    BronzeSink(store).write(_priced("20260101T000000000000Z-aaaa-000001", rows))
    summary = build_trade_bars()
    bars = bronze_table(data_dir, TRADE_BARS_DIR)
    assert pd.Timestamp("2026-01-01T00:00:00Z") not in set(bars["bucket_start"])
    assert bars["high"].max() == 100.0 and len(summary.suspect) == 1 and "00:00:05" in summary.suspect[0]


def _across_midnight(batch_id: str, seconds: range, conn: str = "c1", first_seq: int = 0) -> MicroBatch:
    """BTC-USD trades at 100.0 every 20 s, at `seconds` from 2026-01-01T23:50:00Z (600 is midnight), on `conn`,
    consecutive sequence numbers from `first_seq`: each in its own UTC date's partition."""
    batch = MicroBatch(batch_id)
    base = pd.Timestamp("2026-01-01T23:50:00Z")
    for i, s in enumerate(seconds):
        when = (base + pd.Timedelta(seconds=s)).strftime("%Y-%m-%dT%H:%M:%SZ")
        batch.add_trade("BTC-USD", when[:10], (f"{1000 + s}", "100.0", "0.5", "BUY", when, "update", "market_trades",
                                               when, "", first_seq + i, conn, 1767311400.0 + s, None))
    return batch


def test_the_last_bar_of_a_day_is_complete_once_a_trade_of_the_next_day_closes_it(data_dir):
    """The 23:55 bar's later trade is in the next day's partition: it was only looked for in its own day, so the
    day's last bar was never complete, however whole (a rebuild, a full refresh: the same). It is closed by the
    next day's first trade, as any bar by a later trade; a stream going on on the same connection leaves no hole."""
    store = Store.from_uri(str(data_dir))
    BronzeSink(store).write(_across_midnight("20260101T000000000000Z-aaaa-000001", range(5, 600, 20)))
    build_trade_bars()
    last = pd.Timestamp("2026-01-01T23:55:00Z")
    bars = bronze_table(data_dir, TRADE_BARS_DIR).set_index("bucket_start")
    assert bars.loc[last, "n_candles"] == 5 and not bars.loc[last, "is_complete"]   # no later trade yet: open

    # the next day's first trades, same connection, the next sequence numbers: the 23:55 bar is closed and whole
    BronzeSink(store).write(_across_midnight("20260102T000000000000Z-aaaa-000002", range(605, 1000, 20),
                                             first_seq=30))
    summary = build_trade_bars()
    assert summary.partitions == 2                      # the day before is rebuilt: its last bar changed
    bars = bronze_table(data_dir, TRADE_BARS_DIR).set_index("bucket_start")
    assert bars.loc[last, "is_complete"] and bars.loc[last, "n_trades"] == 15
    assert bars.loc[pd.Timestamp("2026-01-02T00:00:00Z"), "is_complete"]
    incremental = bronze_table(data_dir, TRADE_BARS_DIR).reset_index(drop=True)
    build_trade_bars(full_refresh=True)
    pd.testing.assert_frame_equal(bronze_table(data_dir, TRADE_BARS_DIR).reset_index(drop=True), incremental)


def test_the_last_bar_of_a_day_a_new_connection_after_midnight_may_have_missed_is_not_complete(data_dir):
    """The day's stream stops at 23:59:45 and the next day's comes on a new connection from 00:00:25: trades of
    the 40 s between may be gone (as between two runs of one day), so the 23:55 bar is not complete."""
    store = Store.from_uri(str(data_dir))
    BronzeSink(store).write(_across_midnight("20260101T000000000000Z-aaaa-000001", range(5, 600, 20)))
    BronzeSink(store).write(_across_midnight("20260102T000000000000Z-aaaa-000002", range(625, 1000, 20), conn="c2"))
    build_trade_bars()
    bars = bronze_table(data_dir, TRADE_BARS_DIR).set_index("bucket_start")
    assert bars.loc[pd.Timestamp("2026-01-01T23:55:00Z"), "n_candles"] == 5
    assert not bars.loc[pd.Timestamp("2026-01-01T23:55:00Z"), "is_complete"]
    assert not bars.loc[pd.Timestamp("2026-01-02T00:00:00Z"), "is_complete"]


def test_a_real_jump_in_the_last_trade_of_a_day_is_confirmed_by_the_next_day_s_trades(data_dir):
    """The day's last trade (23:59:50) jumps 100 -> 130 and the next day trades on at 130 on the same connection: a
    move, not a bad print. It was judged with its own day's trades only ("no later trade yet") and held out for
    good while the next day's first trade closed its bar: the 23:55 bar was complete without a real trade (close
    100, not 130). The next day's trades confirm it (and the next day's first trade is judged after it)."""
    store = Store.from_uri(str(data_dir))
    BronzeSink(store).write(_across_midnight("20260102T000000000000Z-aaaa-000001", range(5, 600, 20)))  # at 100
    jump = MicroBatch("20260102T000000000000Z-aaaa-000002")
    for i, s in enumerate(range(590, 1000, 15)):   # 23:59:50 at 130, then the next day at 130
        when = (pd.Timestamp("2026-01-01T23:50:00Z") + pd.Timedelta(seconds=s)).strftime("%Y-%m-%dT%H:%M:%SZ")
        jump.add_trade("BTC-USD", when[:10], (f"{5000 + i}", "130.0", "0.5", "BUY", when, "update", "market_trades",
                                              when, "", 30 + i, "c1", 1767311400.0 + s, None))
    BronzeSink(store).write(jump)
    summary = build_trade_bars()
    bars = bronze_table(data_dir, TRADE_BARS_DIR).set_index("bucket_start")
    end = bars.loc[pd.Timestamp("2026-01-01T23:55:00Z")]
    assert summary.suspect == []
    assert end["close"] == 130.0 and end["n_trades"] == 16 and end["is_complete"]
    assert bars.loc[pd.Timestamp("2026-01-02T00:00:00Z"), "open"] == 130.0


def test_a_late_trade_of_a_built_day_rebuilds_the_next_day_whose_first_trade_it_judges(data_dir):
    """The next day's first trades are judged after the day's last one: a late trade of the day (a second
    collector's, received after the next day was built) changes that judgement, so the next day is rebuilt too
    and the incremental bars equal a full refresh's."""
    store = Store.from_uri(str(data_dir))
    sink = BronzeSink(store)
    sink.write(_across_midnight("20260102T000000000000Z-aaaa-000001", range(5, 600, 20)))          # 100 to 23:59:45
    nxt = MicroBatch("20260102T000000000000Z-aaaa-000002")
    for i, (s, price) in enumerate([(605, "130.0"), *((s, "100.0") for s in range(625, 1000, 20))]):
        when = (pd.Timestamp("2026-01-01T23:50:00Z") + pd.Timedelta(seconds=s)).strftime("%Y-%m-%dT%H:%M:%SZ")
        nxt.add_trade("BTC-USD", when[:10], (f"{5000 + i}", price, "0.5", "BUY", when, "update", "market_trades",
                                             when, "", 30 + i, "c1", 1767311400.0 + s, None))
    sink.write(nxt)
    first = build_trade_bars()
    assert len(first.suspect) == 1 and "00:00:05" in first.suspect[0]   # 100, 130, 100: a spike
    late = MicroBatch("20260102T000000000000Z-aaaa-000003")   # another collector's trade at 23:59:55, at 130
    late.add_trade("BTC-USD", "2026-01-01", ("4999", "130.0", "0.5", "BUY", "2026-01-01T23:59:55Z", "update",
                                             "market_trades", "2026-01-01T23:59:55Z", "", 7, "c9", 1767311995.0, None))
    sink.write(late)
    build_trade_bars()
    incremental = bronze_table(data_dir, TRADE_BARS_DIR).reset_index(drop=True)
    refreshed = build_trade_bars(full_refresh=True)
    assert refreshed.suspect == []        # 100, 130, 130, 100: a move of two trades, not a one-trade spike
    pd.testing.assert_frame_equal(bronze_table(data_dir, TRADE_BARS_DIR).reset_index(drop=True), incremental)


def test_a_compacted_bronze_day_is_rebuilt_alone_and_unchanged(data_dir):
    """The stream's maintenance compacts a closed day's batch files into one: its partition is not new to bronze
    (the day before's last bar was closed already), so the build rebuilds that day alone, to the same bars."""
    from etl.lake import Lake

    store = Store.from_uri(str(data_dir))
    sink = BronzeSink(store)
    sink.write(_across_midnight("20260102T000000000000Z-aaaa-000001", range(5, 700, 20)))
    sink.write(_across_midnight("20260102T000000000000Z-aaaa-000002", range(705, 1000, 20), first_seq=35))
    build_trade_bars()
    before = bronze_table(data_dir, TRADE_BARS_DIR).reset_index(drop=True)
    assert Lake.of(store).optimize("bronze/trades", partition=[("date", ">", "2026-01-01")])["numFilesRemoved"] == 2
    summary = build_trade_bars()
    assert (summary.files, summary.partitions) == (1, 1)
    pd.testing.assert_frame_equal(bronze_table(data_dir, TRADE_BARS_DIR).reset_index(drop=True), before)


def test_the_first_trade_after_a_day_without_trades_is_judged_after_the_last_trade_before_it(data_dir):
    """BTC-USD traded at 100 on 2026-01-01, not at all on 2026-01-02, and its one trade of 2026-01-03 so far is
    100x off. The day before used to judge a day's first trades was strictly D-1: with no trade that day, the
    lone print had nothing before it and nothing after it, so no rule could judge it and it became the 00:00 bar's
    open, high and close (10,000). It is judged after the product's last trade before it (2026-01-01 23:59:30):
    an unconfirmed jump, held out and named, as within a day; incremental equals a full refresh."""
    store = Store.from_uri(str(data_dir))
    BronzeSink(store).write(_priced("20260101T000000000000Z-aaaa-000001",
                                    [(f"2026-01-01T23:{s // 60:02d}:{s % 60:02d}Z", "100.0")
                                     for s in range(0, 3600, 30)]))
    build_trade_bars()
    BronzeSink(store).write(_priced("20260103T000000000000Z-aaaa-000002", [("2026-01-03T00:00:05Z", "10000.0")],
                                    first_id=1000, seq=1000))
    summary = build_trade_bars()
    bars = bronze_table(data_dir, TRADE_BARS_DIR)
    assert pd.Timestamp("2026-01-03T00:00:00Z") not in set(bars["bucket_start"]) and bars["high"].max() == 100.0
    assert len(summary.suspect) == 1 and "2026-01-03T00:00:05" in summary.suspect[0] \
        and "previous trade's 100" in summary.suspect[0]
    incremental = bars.reset_index(drop=True)
    build_trade_bars(full_refresh=True)
    pd.testing.assert_frame_equal(bronze_table(data_dir, TRADE_BARS_DIR).reset_index(drop=True), incremental)


def test_a_late_trade_before_a_day_without_trades_rebuilds_the_next_day_that_traded(data_dir):
    """2026-01-02 has no BTC-USD trade; 2026-01-03's first trade (130 between trades at 100) is judged after
    2026-01-01's last one: a spike. A late trade of 2026-01-01 (23:59:55 at 130, another collector's) makes it a
    move of two trades; the rebuild of 2026-01-01 rebuilds 2026-01-03 too (the product's next partition, not the
    empty 2026-01-02), so the incremental bars equal a full refresh's."""
    store = Store.from_uri(str(data_dir))
    sink = BronzeSink(store)
    sink.write(_priced("20260101T000000000000Z-aaaa-000001", [(f"2026-01-01T23:{s // 60:02d}:{s % 60:02d}Z", "100.0")
                                                               for s in range(0, 3590, 30)]))
    sink.write(_priced("20260103T000000000000Z-aaaa-000002", [("2026-01-03T00:00:05Z", "130.0")] + [
        (f"2026-01-03T00:{s // 60:02d}:{s % 60:02d}Z", "100.0") for s in range(30, 600, 30)], first_id=1000, seq=1000))
    first = build_trade_bars()
    assert len(first.suspect) == 1 and "2026-01-03T00:00:05" in first.suspect[0]
    late = MicroBatch("20260103T000000000000Z-aaaa-000003")
    late.add_trade("BTC-USD", "2026-01-01", ("999", "130.0", "0.5", "BUY", "2026-01-01T23:59:55Z", "update",
                                             "market_trades", "2026-01-01T23:59:55Z", "", 7, "c9", 1767311995.0, None))
    sink.write(late)
    build_trade_bars()
    incremental = bronze_table(data_dir, TRADE_BARS_DIR).reset_index(drop=True)
    assert incremental.set_index("bucket_start").at[pd.Timestamp("2026-01-03T00:00:00Z"), "open"] == 130.0
    assert build_trade_bars(full_refresh=True).suspect == []
    pd.testing.assert_frame_equal(bronze_table(data_dir, TRADE_BARS_DIR).reset_index(drop=True), incremental)
