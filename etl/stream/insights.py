"""`python -m etl insights --product-id ID`: a live terminal view of one product from the `ticker` channel.

Every second: mid = (best_bid + best_ask) / 2 and spread = best_ask - best_bid from the latest ticker, the mid is
sampled (carried forward when no ticker came), 1-minute and 5-minute averages are the means of the samples of the
last 60 / 300 s, and the online forecaster (etl/stream/forecast.py) is updated and asked for the mid 60 s ahead;
forecasts are scored (MAE, RMSE) against the mid observed when their horizon passes, beside the last price's.
On a terminal the block is redrawn in place; piped, one block per refresh is printed. Ctrl-C, SIGTERM or
`--seconds` end it cleanly (exit 0).
"""

from __future__ import annotations

import asyncio
import math
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

from etl.settings import Settings, get_settings
from etl.stream.feed import Feed, Gap, ws_url
from etl.stream.forecast import OnlineForecaster
from etl.stream.validate import event_problem, message_number


def _float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass
class LiveState:
    product: str
    bid: float | None = None
    ask: float | None = None
    bid_size: float | None = None
    ask_size: float | None = None
    last_ticker_at: float | None = None
    last_message_at: float | None = None   # any message, heartbeats included: the feed is alive
    stale_after_s: float = 5.0             # the feed's stall_s: silent this long, the mid is not current
    messages: int = 0
    gaps: int = 0
    samples: deque = field(default_factory=lambda: deque(maxlen=300))   # (t, mid) per second, last 5 min
    ticker_seq: tuple[str, int] = ("", -1)  # (connection, sequence_num) of the last ticker message applied
    forecaster: OnlineForecaster = field(default_factory=OnlineForecaster)

    @property
    def mid(self) -> float | None:
        return None if self.bid is None or self.ask is None else (self.bid + self.ask) / 2

    def silent_s(self, now: float) -> float:
        """Seconds since the feed's last message (0 before the first)."""
        return 0.0 if self.last_message_at is None else now - self.last_message_at

    def on_message(self, received_at: float, conn_id: str, msg: dict) -> None:
        self.messages += 1
        self.last_message_at = received_at
        if msg.get("channel") != "ticker":
            return
        seq = message_number(msg.get("sequence_num"))
        if seq is not None:
            # a repeat or an older message (a `duplicate` gap, still delivered) would set the mid back to an old one
            if self.ticker_seq[0] == conn_id and seq <= self.ticker_seq[1]:
                return
            self.ticker_seq = (conn_id, seq)
        events = msg.get("events")
        for event in events if isinstance(events, list) else []:   # bad input is skipped, never a TypeError
            if event_problem(event, "tickers"):
                continue
            for t in event.get("tickers") or []:
                if not isinstance(t, dict) or t.get("product_id") != self.product:
                    continue
                bid, ask = _float(t.get("best_bid")), _float(t.get("best_ask"))
                if bid is not None and ask is not None and 0 < bid <= ask:
                    self.bid, self.ask = bid, ask
                    self.bid_size, self.ask_size = _float(t.get("best_bid_quantity")), _float(t.get("best_ask_quantity"))
                    self.last_ticker_at = received_at

    def on_gap(self, gap: Gap) -> None:
        self.gaps += 1

    def tick(self, t: int) -> None:
        """Sample the mid of second `t` and update the model; not while the feed is silent (the mid is not current:
        a hole, which restarts the forecaster's window)."""
        mid = self.mid
        if mid is None or self.silent_s(t) > self.stale_after_s:
            return
        self.samples.append((t, mid))
        self.forecaster.update(t, mid)

    def average(self, seconds: int, now: int) -> float | None:
        values = [m for t, m in self.samples if t > now - seconds]
        return sum(values) / len(values) if values else None

    def render(self, now: int, url: str) -> list[str]:
        f = self.forecaster
        clock = datetime.fromtimestamp(now, tz=UTC).strftime("%H:%M:%S")

        def num(v, fmt=",.2f"):
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

        mid = self.mid
        lines = [f"{self.product}  {clock} UTC  from {url}  (Ctrl-C to quit)"]
        if mid is None:
            return [*lines, "waiting for the first ticker with best bid/ask...", "", "", "", ""]
        spread = self.ask - self.bid
        if self.silent_s(now) > self.stale_after_s:
            lines[0] += (f"   STALE: no message from the feed for {self.silent_s(now):.0f} s (reconnecting); the mid "
                         f"is of {datetime.fromtimestamp(self.last_ticker_at, tz=UTC):%H:%M:%S} and is not sampled")
        lines.append(f"mid       {num(mid):>14}   spread {num(spread, ',.4g')} ({spread / mid * 1e4:.2f} bp)   "
                     f"bid {num(self.bid)} x {num(self.bid_size, '.4g')}   ask {num(self.ask)} x "
                     f"{num(self.ask_size, '.4g')}")
        lines.append(f"average   1 min {num(self.average(60, now)):>14}   5 min {num(self.average(300, now)):>14}   "
                     f"({len(self.samples)} s sampled)")
        if f.last_forecast is not None and f.last_forecast[0] > now:
            target, value = f.last_forecast
            at = datetime.fromtimestamp(target, tz=UTC).strftime("%H:%M:%S")
            lines.append(f"forecast  mid at {at} = {num(value)} ({value - mid:+,.4g})   online linear model, "
                         f"{f.updates} updates")
        else:
            lines.append(f"forecast  warming up: the first needs {max(f.lags) + 1} s of samples, the first error "
                         f"{f.horizon} s more (have {len(f.history)})")
        lines.append(f"error     model MAE {num(f.model.mae, ',.4g')} RMSE {num(f.model.rmse, ',.4g')} over "
                     f"{f.model.n} forecast(s)   last price MAE {num(f.naive.mae, ',.4g')} RMSE "
                     f"{num(f.naive.rmse, ',.4g')}")
        lines.append(f"feed      {self.messages:,} messages, {self.gaps} gap(s)")
        return lines


def run_insights(product: str, seconds: float | None = None, source: str | None = None,
                 settings: Settings | None = None, out=None, validate: bool = True) -> LiveState:
    """Run the live view until Ctrl-C / SIGTERM / `seconds`; the product is checked first (unknown -> SourceError
    naming close matches, as `ingest` does)."""
    settings = settings or get_settings()
    product = product.strip().upper()
    if validate:
        from etl.source import ExchangeClient, api_url, check_products

        check_products(ExchangeClient(api_url(source, settings), settings), [product])
    url = ws_url(source, settings)
    state = LiveState(product, stale_after_s=settings.stream_stall_s)
    asyncio.run(_run(state, url, seconds, settings, out or sys.stdout))
    return state


async def _run(state: LiveState, url: str, seconds: float | None, settings: Settings, out) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    if seconds is not None:
        loop.call_later(seconds, stop.set)
    feed = Feed(url, [state.product], state.on_message, state.on_gap, channels=("heartbeats", "ticker"),
                stall_s=settings.stream_stall_s, backoff_initial_s=settings.backoff_initial_s,
                backoff_max_s=settings.backoff_max_s, max_message_bytes=settings.stream_max_message_bytes)
    task = asyncio.create_task(feed.run(stop))
    tty = hasattr(out, "isatty") and out.isatty()
    drawn = 0
    next_t = math.floor(time.time()) + 1
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_t - time.time()))
            except TimeoutError:
                pass
            if stop.is_set():
                break
            state.tick(next_t)
            lines = state.render(next_t, url)
            if tty:
                out.write((f"\x1b[{drawn}F" if drawn else "") + "\x1b[J" + "\n".join(lines) + "\n")
                drawn = len(lines)
            else:
                out.write("\n".join(lines) + "\n\n")
            out.flush()
            next_t = max(next_t + 1, math.floor(time.time()))
    finally:
        stop.set()
        await task
