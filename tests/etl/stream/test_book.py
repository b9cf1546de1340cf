"""The collector's order books against the simulator's book model over real WebSockets: every bronze snapshot is
exactly the simulator's book at the snapshot's feed time, with and without lost messages (a gap resubscribes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from etl.settings import PROJECT_ROOT
from etl.simulator.book import book_at, book_diff
from etl.simulator.price_model import SyntheticSource
from etl.stream.book import Books
from etl.stream.validate import book_update_problem, window
from tests.etl.stream.test_collector import bronze, live  # noqa: F401  (the fixture)

DEPTH = 5


@pytest.fixture
def book_env(monkeypatch):
    monkeypatch.setenv("PIPELINE_STREAM_BOOK_DEPTH", str(DEPTH))
    monkeypatch.setenv("PIPELINE_STREAM_BOOK_SNAPSHOT_S", "0.2")


def assert_snapshots_match_model(book: pd.DataFrame) -> int:
    """Each snapshot (product, snapshot_at) equals the model's top DEPTH levels at its book_time; returns the count."""
    source = SyntheticSource(42, ("BTC-USD", "ETH-USD"))
    n = 0
    for (product, _), snap in book.groupby(["product_id", "snapshot_at"]):
        t_us = int(snap["book_time"].iloc[0].value // 1000)
        model = book_at(source, product, t_us)
        for side, reverse in (("bid", True), ("offer", False)):
            got = snap[snap["side"] == side].sort_values("level")
            want = sorted(model[side].items(), reverse=reverse)[:DEPTH]
            assert list(got["level"]) == list(range(1, len(want) + 1)), (product, side)
            assert np.allclose(got["price"], [p for p, _ in want], rtol=0, atol=1e-9), (product, side, t_us)
            assert np.allclose(got["quantity"], [q / 1e8 for _, q in want], rtol=0, atol=1e-12), (product, side)
        n += 1
    return n


def test_rebuilt_book_equals_the_simulators_book_at_every_snapshot(live, book_env, data_dir):  # noqa: F811
    from etl.stream.collector import collect

    live()
    summary = collect(["BTC-USD", "ETH-USD"], seconds=3)
    assert summary.gaps == {} and summary.rejects == 0 and summary.book_messages > 20
    book = bronze(data_dir, "order_book")
    assert set(book["product_id"]) == {"BTC-USD", "ETH-USD"} and summary.committed["book"] == len(book)
    assert assert_snapshots_match_model(book) >= 20
    # partitioned by the book's own (feed) date; best bid below best ask
    assert (book["date"] == book["book_time"].dt.strftime("%Y-%m-%d")).all()
    top = book[book["level"] == 1].pivot_table(index=["product_id", "snapshot_at"], columns="side", values="price")
    assert (top["bid"] < top["offer"]).all()


def test_lost_book_messages_force_a_resubscription_and_no_stale_snapshot(live, book_env, data_dir):  # noqa: F811
    from etl.stream.collector import collect

    sim = live(ws_drop_rate=0.03, ws_duplicate_rate=0.05)
    summary = collect(["BTC-USD", "ETH-USD"], seconds=4)
    dropped = [s for kind, s in sim.ws_faults if kind == "dropped"]
    assert dropped and summary.gaps["sequence"] >= 1
    gaps = bronze(data_dir, "stream_gaps")
    resyncs = gaps[gaps["kind"] == "book_resync"]
    assert len(resyncs) == summary.gaps["sequence"] and (resyncs["channel"] == "l2_data").all()
    book = bronze(data_dir, "order_book")
    # a book that missed a message is never written: every snapshot is the exchange's book, even between gaps
    assert assert_snapshots_match_model(book) >= 5
    # the resubscriptions delivered fresh snapshots: snapshots after the last gap exist
    assert book["snapshot_at"].max() > resyncs["detected_at"].max()


def test_hand_built_book_applies_updates_and_removals():
    """Advanced Trade's recorded level2 snapshot (3 levels a side) and update (../shared/data/coinbase)."""
    data = PROJECT_ROOT.parent.parent / "shared" / "data" / "coinbase"
    if not data.is_dir():
        data = Path("/work/shared/data/coinbase")
    real, update = (json.loads((data / f"ws_l2_data_{kind}.json").read_text()) for kind in ("snapshot", "update"))
    books = Books()
    bounds = ("2000-01-01T00:00:00", "2100-01-01T00:00:00")
    for msg in (real, update):
        for event in msg["events"]:
            assert not any(book_update_problem(u, bounds) for u in event["updates"])
            books.apply(event["type"], event["product_id"], event["updates"], msg["sequence_num"], "c")
    book = books.books["BTC-USD"]
    assert book.bid[68900.0] == 2.0 and 68901.0 not in book.offer   # set absolute; "0.00000000" removes
    assert book.event_time == "2026-04-07T14:30:01.456789Z"
    # an update before any snapshot is not a book
    books.apply("update", "ETH-USD", update["events"][0]["updates"], 2, "c")
    assert "ETH-USD" not in books.books


def test_book_update_field_rules():
    bounds = window(pd.Timestamp("2026-04-07T14:30:00Z").timestamp())
    good = {"side": "bid", "event_time": "2026-04-07T14:30:01.456789Z", "price_level": "68900.00",
            "new_quantity": "0"}
    assert book_update_problem(good, bounds) is None
    assert book_update_problem({**good, "side": "buy"}, bounds) == "side='buy' is not bid or offer"
    assert book_update_problem({**good, "price_level": "0"}, bounds) == "price_level='0' is not a positive decimal"
    assert book_update_problem({**good, "new_quantity": "-1"}, bounds) == \
        "new_quantity='-1' is not a non-negative decimal"
    assert "event_time" in book_update_problem({**good, "event_time": "yesterday"}, bounds)


def test_model_diff_rebuilds_the_next_book():
    source = SyntheticSource(42, ("BTC-USD",))
    t = int(pd.Timestamp("2026-12-01T12:00:00Z").value // 1000)
    old, new = book_at(source, "BTC-USD", t), book_at(source, "BTC-USD", t + 1_000_000)
    rebuilt = {side: dict(levels) for side, levels in old.items()}
    for side, price, q in book_diff(old, new):
        if q:
            rebuilt[side][price] = q
        else:
            rebuilt[side].pop(price)
    assert rebuilt == new and max(new["bid"]) < min(new["offer"])


def test_a_rejected_book_event_is_kept_and_distrusts_only_its_product(data_dir):
    import time as _time

    from etl.storage import get_store
    from etl.stream.collector import Collector, StreamSummary
    from etl.stream.sinks import BronzeSink

    now = _time.time()
    stamp = pd.Timestamp(now, unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def msg(seq, kind, product, price="100.00", qty="1.0"):
        return {"channel": "l2_data", "client_id": "", "timestamp": stamp, "sequence_num": seq,
                "events": [{"type": kind, "product_id": product, "updates": [
                    {"side": "bid", "event_time": stamp, "price_level": price, "new_quantity": qty},
                    {"side": "offer", "event_time": stamp, "price_level": "101.00", "new_quantity": "2.0"}]}]}

    collector = Collector(BronzeSink(get_store()), StreamSummary(url="", products=[]))
    collector.on_message(now, "c", msg(0, "snapshot", "BTC-USD"))
    collector.on_message(now, "c", msg(1, "snapshot", "ETH-USD"))
    collector.on_message(now, "c", msg(2, "update", "ETH-USD", qty="-3"))       # breaks a field rule
    assert set(collector.books.books) == {"BTC-USD"}                              # ETH-USD waits for a snapshot
    collector.on_message(now, "c", msg(3, "update", "ETH-USD", price="99.00"))  # ignored: no snapshot yet
    assert "ETH-USD" not in collector.books.books
    collector.snapshot_books(5)
    counts = collector.batch.counts()
    assert counts["rejects"] == 1 and counts["gaps"] == 1 and counts["book"] == 2   # BTC-USD: 1 bid + 1 offer
    assert collector.summary.gaps["book_resync"] == 1


def test_a_late_repeat_of_a_book_message_never_rolls_the_book_back(data_dir, book_env):
    """A repeated `l2_data` message arriving after a newer update of the same level (sequence_num steps back: a
    `duplicate` gap) would set the level's absolute quantity back to the older value; the book must stay the
    exchange's (a repeat changes nothing, an older message is never applied)."""
    import time as _time

    from etl.stream.collector import collect
    from tests.etl.stream.test_collector import ScriptedServer, _iso, _message

    t = _iso(_time.time())

    def l2(kind, seq, *levels):
        return _message("l2_data", [{"type": kind, "product_id": "BTC-USD", "updates": [
            {"side": side, "event_time": t, "price_level": price, "new_quantity": qty}
            for side, price, qty in levels]}], t, seq)

    snapshot = l2("snapshot", 0, ("bid", "100.00", "1.0"), ("offer", "101.00", "1.0"))
    first, second = l2("update", 1, ("bid", "100.00", "2.0")), l2("update", 2, ("bid", "100.00", "3.0"))
    server = ScriptedServer([[snapshot, first, second, first, snapshot]])   # seq 1 and 0 again, late
    try:
        summary = collect(["BTC-USD"], seconds=1.5, url=server.url, validate=False)
    finally:
        server.close()
    assert summary.gaps["duplicate"] == 2
    book = bronze(data_dir, "order_book")
    bids = book[book["side"] == "bid"]
    assert len(bids) >= 2 and set(bids["quantity"]) == {3.0} and set(bids["sequence_num"]) == {2}


def test_a_real_snapshot_whose_levels_carry_the_epoch_builds_the_book(data_dir):
    """Coinbase's level2 snapshot gives every level `event_time` "1970-01-01T00:00:00Z" (the level2 example of its
    WebSocket channel docs): the snapshot is the book, not a reject (a reject resubscribed level2 for another such
    snapshot, endlessly, and no book was ever written); the book's time is its first update's, never 1970."""
    import time as _time

    from etl.storage import get_store
    from etl.stream.collector import Collector, StreamSummary
    from etl.stream.sinks import BronzeSink

    now = _time.time()
    stamp = pd.Timestamp(now, unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    epoch = "1970-01-01T00:00:00Z"

    def msg(seq, kind, when, *levels):
        return {"channel": "l2_data", "client_id": "", "timestamp": stamp, "sequence_num": seq,
                "events": [{"type": kind, "product_id": "BTC-USD", "updates": [
                    {"side": side, "event_time": when, "price_level": price, "new_quantity": qty}
                    for side, price, qty in levels]}]}

    collector = Collector(BronzeSink(get_store()), StreamSummary(url="", products=[]))
    collector.on_message(now, "c", msg(0, "snapshot", epoch, ("bid", "21921.73", "0.06317902"),
                                       ("bid", "21921.3", "0.02"), ("offer", "21922.5", "1.5")))
    assert collector.summary.rejects == 0 and collector.summary.gaps == {}
    assert collector.books.books["BTC-USD"].bid == {21921.73: 0.06317902, 21921.3: 0.02}
    collector.snapshot_books(5)
    assert collector.batch.counts()["book"] == 0        # no time yet: nothing to date the book by
    collector.on_message(now, "c", msg(1, "update", stamp, ("bid", "21921.3", "0")))
    collector.snapshot_books(5)
    rows = list(collector.books.snapshot_rows(5, now))
    assert [(r[0], r[1], r[2][:4]) for r in rows] == [("BTC-USD", stamp[:10], ("bid", 1, 21921.73, 0.06317902)),
                                                      ("BTC-USD", stamp[:10], ("offer", 1, 21922.5, 1.5))]
    assert abs(rows[0][2][4] - now) < 1e-3 and collector.batch.counts()["book"] == 2
    # only a snapshot's levels may carry the epoch: an update's time is checked
    assert "event_time" in book_update_problem({"side": "bid", "event_time": epoch, "price_level": "1",
                                                "new_quantity": "1"}, window(now))
