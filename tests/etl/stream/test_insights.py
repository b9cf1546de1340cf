"""The live view's state (etl/stream/insights.py) on messages the feed contract allows: a ticker repeated late or
arriving out of order (a `duplicate` gap; the feed still delivers it) is older than the mid already shown."""

from __future__ import annotations

from etl.stream.insights import LiveState


def _ticker(seq: int, bid: str, ask: str) -> dict:
    return {"channel": "ticker", "client_id": "", "timestamp": "2026-04-07T14:30:00.000000Z", "sequence_num": seq,
            "events": [{"type": "update", "tickers": [{"type": "ticker", "product_id": "BTC-USD", "price": bid,
                                                       "best_bid": bid, "best_bid_quantity": "1",
                                                       "best_ask": ask, "best_ask_quantity": "1"}]}]}


def test_a_late_repeated_or_older_ticker_does_not_set_the_mid_back():
    state = LiveState("BTC-USD")
    state.on_message(1.0, "c1", _ticker(3, "100", "102"))
    state.on_message(2.0, "c1", _ticker(5, "200", "202"))
    state.on_message(3.0, "c1", _ticker(3, "100", "102"))     # seq 3 again, after 5: a late repeat
    state.on_message(3.5, "c1", _ticker(4, "150", "152"))     # seq 4 after 5: out of order
    assert state.mid == 201.0 and state.last_ticker_at == 2.0
    state.on_message(4.0, "c2", _ticker(0, "300", "302"))     # a new connection counts from 0 again
    assert state.mid == 301.0


def test_a_ticker_message_of_the_wrong_shape_is_skipped_not_a_crash_of_the_view():
    state = LiveState("BTC-USD")
    state.on_message(1.0, "c1", _ticker(1, "100", "102"))
    for seq, events in enumerate((5, [{"type": "update", "tickers": 5}], [{"type": "update", "tickers": {"a": 1}}],
                                  ["x"], None), 2):
        state.on_message(2.0, "c1", {**_ticker(seq, "1", "2"), "events": events})
    assert state.mid == 101.0 and state.messages == 6
