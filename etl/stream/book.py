"""The collector's order books: `level2` messages (channel `l2_data`) applied per product, trusted only while whole.

A `snapshot` event replaces a product's book; an `update` sets each level's absolute quantity (`new_quantity` 0
removes it). A book is *valid* from its snapshot until the feed may have lost one of its messages: a sequence gap
(sequence_num is per connection, so any lost message may be a book's), a disconnect or stall, or an update that
breaks a field rule. An invalid book is neither updated nor snapshotted until a fresh snapshot arrives (the collector
resubscribes `level2` after a sequence gap; a new connection subscribes anyway): a bronze snapshot is always the
exchange's book, never a guess. Its time is its last update's `event_time`: a snapshot's levels carry none (the
epoch), so a book is written from its first update on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from etl.stream.validate import SNAPSHOT_EVENT_TIME


@dataclass
class Book:
    bid: dict[float, float] = field(default_factory=dict)     # price -> quantity (base units)
    offer: dict[float, float] = field(default_factory=dict)
    event_time: str = ""        # the last applied update's event_time (feed time of the book; "" until known)
    sequence_num: int | None = None
    connection_id: str = ""

    def apply(self, updates: list[dict]) -> None:
        for u in updates:
            side = self.bid if u["side"] == "bid" else self.offer
            quantity = float(u["new_quantity"])
            if quantity:
                side[float(u["price_level"])] = quantity
            else:
                side.pop(float(u["price_level"]), None)
        if updates and updates[-1]["event_time"] != SNAPSHOT_EVENT_TIME:  # a snapshot's levels carry no time
            self.event_time = updates[-1]["event_time"]

    def top(self, depth: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """The best `depth` levels of each side: bids descending, offers ascending."""
        bids = sorted(self.bid.items(), reverse=True)[:depth]
        return bids, sorted(self.offer.items())[:depth]


class Books:
    """Valid books per product (see the module docstring)."""

    def __init__(self):
        self.books: dict[str, Book] = {}

    def apply(self, event_type: str, product: str, updates: list[dict], seq: int | None, conn_id: str) -> None:
        if event_type == "snapshot":
            self.books[product] = Book()
        book = self.books.get(product)
        if book is None:
            return  # waiting for a snapshot
        book.apply(updates)
        book.sequence_num, book.connection_id = seq, conn_id

    def invalidate(self, product: str | None = None) -> None:
        """Forget one product's book (all when None) until its next snapshot."""
        if product is None:
            self.books.clear()
        else:
            self.books.pop(product, None)

    def snapshot_rows(self, depth: int, now: float):
        """(product, UTC date of the book time, row) for the top `depth` levels of every valid book."""
        for product, book in sorted(self.books.items()):
            if not book.event_time:
                continue
            when = datetime.fromisoformat(book.event_time[:26].rstrip("Z") + "+00:00").timestamp()
            bids, offers = book.top(depth)
            for side, levels in (("bid", bids), ("offer", offers)):
                for level, (price, quantity) in enumerate(levels, 1):
                    yield product, book.event_time[:10], (side, level, price, quantity, when, now,
                                                          book.sequence_num, book.connection_id)
