"""What a live message must be before any of it becomes a row: every field of a trade, a ticker and the envelope.

A field's value names a partition (`product_id`, the UTC date of a trade's `time` or of a ticker message's
`timestamp`) or is a number downstream, so each is checked whole (`re.fullmatch`: `$` would let a trailing newline
through) against Coinbase's contract (docs/coinbase_api.md, all values strings):
- `product_id`: `BASE-QUOTE`, 1-20 capital letters or digits each;
- times: `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, a real calendar time, within TIME_WINDOW of the collector's clock (a
  trade snapshot after a reconnect is minutes old; nothing on a live feed is a week old or a day ahead);
- prices and trade sizes: decimals > 0; volumes and book quantities: decimals >= 0; the 24 h change: a signed
  decimal (decimals are digits with an optional fraction, so NaN, inf, exponents and "abc" fail);
- `side` BUY | SELL, `trade_id` 1-64 letters, digits or dashes, ticker `type` "ticker", event `type`
  snapshot | update;
- `level2` updates: `side` bid | offer, `price_level` > 0, `new_quantity` >= 0 ("0" removes the level),
  `event_time` a time as above, or in a snapshot the epoch (SNAPSHOT_EVENT_TIME: Coinbase's snapshot levels carry
  no time; the book's time is its first update's).
- the envelope: `sequence_num` an integer 0..2^63-1 (the feed counts only such numbers, so a message without one is a
  sequence gap at the next message: its place is a hole in the trade bars), `timestamp` a time as above.
Each check returns None when the value passes, else the reason (naming the field and the value), which the
collector stores with the raw text in bronze/stream_rejects.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

PRODUCT = re.compile(r"[A-Z0-9]{1,20}-[A-Z0-9]{1,20}")
TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z")
DECIMAL = re.compile(r"\d{1,20}(\.\d{1,20})?")
SIGNED = re.compile(r"-?\d{1,20}(\.\d{1,20})?")
TRADE_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
TIME_WINDOW = (timedelta(days=7), timedelta(days=1))  # how far before / after the collector's clock
EVENT_TYPES = ("snapshot", "update")
SIDES = ("BUY", "SELL")
BOOK_SIDES = ("bid", "offer")
SNAPSHOT_EVENT_TIME = "1970-01-01T00:00:00Z"   # every level of a real l2_data snapshot (Coinbase's level2 example)

# ticker fields: (name, rule, required); ticker_batch has no best bid/ask
_POSITIVE, _NON_NEGATIVE, _SIGNED = "positive", "non-negative", "signed"
TICKER_RULES = (("price", _POSITIVE, True), ("volume_24_h", _NON_NEGATIVE, False), ("low_24_h", _POSITIVE, False),
                ("high_24_h", _POSITIVE, False), ("low_52_w", _POSITIVE, False), ("high_52_w", _POSITIVE, False),
                ("price_percent_chg_24_h", _SIGNED, False), ("best_bid", _POSITIVE, False),
                ("best_bid_quantity", _NON_NEGATIVE, False), ("best_ask", _POSITIVE, False),
                ("best_ask_quantity", _NON_NEGATIVE, False))


def window(now: float) -> tuple[str, str]:
    """The earliest and latest acceptable time at `now` (epoch seconds), as comparable ISO text."""
    clock = datetime.fromtimestamp(now, tz=UTC)
    return tuple((clock + d).strftime("%Y-%m-%dT%H:%M:%S") for d in (-TIME_WINDOW[0], TIME_WINDOW[1]))


def time_problem(field: str, value, bounds: tuple[str, str]) -> str | None:
    if not isinstance(value, str) or not TIME.fullmatch(value):
        return f"{field}={value!r} is not a UTC time YYYY-MM-DDTHH:MM:SS[.f]Z"
    try:
        datetime.fromisoformat(value[:19])
    except ValueError:
        return f"{field}={value!r} is not a calendar time"
    if not bounds[0] <= value[:19] <= bounds[1]:
        return f"{field}={value!r} is outside {bounds[0]}Z..{bounds[1]}Z (the collector's clock -7 days/+1 day)"
    return None


def number_problem(field: str, value, rule: str) -> str | None:
    ok = isinstance(value, str) and (SIGNED if rule == _SIGNED else DECIMAL).fullmatch(value)
    if ok and (rule != _POSITIVE or float(value) > 0):
        return None
    return f"{field}={value!r} is not a {rule} decimal"


def product_problem(value) -> str | None:
    return None if isinstance(value, str) and PRODUCT.fullmatch(value) else f"product_id={value!r} is not BASE-QUOTE"


def trade_problem(item, bounds: tuple[str, str]) -> str | None:
    """Why a `market_trades` trade cannot be stored (None: it can)."""
    if not isinstance(item, dict):
        return "trade is not an object"
    trade_id, side = item.get("trade_id"), item.get("side")
    return (product_problem(item.get("product_id"))
            or (None if isinstance(trade_id, str) and TRADE_ID.fullmatch(trade_id) else f"trade_id={trade_id!r}")
            or number_problem("price", item.get("price"), _POSITIVE)
            or number_problem("size", item.get("size"), _POSITIVE)
            or (None if side in SIDES else f"side={side!r} is not BUY or SELL")
            or time_problem("time", item.get("time"), bounds))


def ticker_problem(item) -> str | None:
    """Why a `ticker` element cannot be stored (None: it can); its date comes from the message timestamp."""
    if not isinstance(item, dict):
        return "ticker is not an object"
    if item.get("type") != "ticker":
        return f"type={item.get('type')!r} is not 'ticker'"
    problems = (number_problem(name, item.get(name), rule) for name, rule, required in TICKER_RULES
                if required or item.get(name) is not None)
    return product_problem(item.get("product_id")) or next((p for p in problems if p), None)


def book_update_problem(item, bounds: tuple[str, str], snapshot: bool = False) -> str | None:
    """Why a `level2` update (of a `snapshot` event or not) cannot be applied to the book (None: it can)."""
    if not isinstance(item, dict):
        return "update is not an object"
    side, when = item.get("side"), item.get("event_time")
    return ((None if side in BOOK_SIDES else f"side={side!r} is not bid or offer")
            or number_problem("price_level", item.get("price_level"), _POSITIVE)
            or number_problem("new_quantity", item.get("new_quantity"), _NON_NEGATIVE)
            or (None if snapshot and when == SNAPSHOT_EVENT_TIME else time_problem("event_time", when, bounds)))


INT64_MAX = 2 ** 63 - 1


def message_number(value) -> int | None:
    """A message's `sequence_num` (or a heartbeat counter) when it is one: an integer 0..INT64_MAX (not a bool, a
    float or text; a larger one fits no bronze column and would fail the batch's write), else None."""
    return value if type(value) is int and 0 <= value <= INT64_MAX else None


def envelope_problem(msg: dict, bounds: tuple[str, str]) -> str | None:
    """Why a data message as a whole cannot be stored: its number (its place among the connection's messages, which
    the trade bars' runs are cut by), its timestamp (the ticker's date partition), its events."""
    if not isinstance(msg.get("events", []), list):
        return "events is not a list"
    seq = msg.get("sequence_num")
    if message_number(seq) is None:
        return f"sequence_num={seq!r} is not an integer 0..2^63-1"
    return time_problem("timestamp", msg.get("timestamp"), bounds)


def event_problem(event, key: str) -> str | None:
    """Why an event cannot be read: not an object, an unknown type, or its `key` (trades, tickers) not a list."""
    if not isinstance(event, dict):
        return "event is not an object"
    if event.get("type") not in EVENT_TYPES:
        return f"event type={event.get('type')!r} is not snapshot or update"
    return None if isinstance(event.get(key, []), list) else f"event {key} is not a list"
