"""The simulated product universe: metadata and the calibration targets of the price model.

Prices are anchored at REFERENCE_DATE (`start_price` is the price then) and random-walk both ways from it, so
today's prices look like today's market whatever year the simulator runs in. Vols, betas and volumes follow the
calibration in docs/simulator.md (real Coinbase BTC/ETH/SOL 5-minute candles; provenance in docs/coinbase_api.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date

REFERENCE_DATE = date(2026, 1, 1)  # day whose opening price is `start_price`
EPOCH_DATE = date(2015, 1, 1)      # first day with candles (earlier windows are empty: "not listed yet")
LAST_DATE = date(2099, 12, 31)     # last day with candles
MARKET_VOL = 0.50                  # annualised vol of the common crypto market factor


@dataclass(frozen=True)
class ProductSpec:
    id: str
    base: str
    quote: str
    start_price: float             # price at REFERENCE_DATE 00:00 UTC, in the quote currency
    annual_vol: float              # target annualised vol of daily log returns (sqrt(365))
    beta: float                    # loading on the market factor
    daily_volume_usd: float        # average traded value per day
    missing_prob: float            # probability that a minute has no trade (no candle)
    quote_increment: str = "0.01"
    base_increment: str = "0.00000001"
    min_market_funds: str = "1"
    status: str = "online"         # "online" | "delisted"
    status_message: str = ""
    trading_disabled: bool = False
    derived_from: tuple[str, str] | None = None  # cross pair priced as first / second (e.g. ETH-USD / BTC-USD)

    @property
    def idio_vol(self) -> float:
        """Annualised vol of the product's own shocks: total variance minus the market's share."""
        return math.sqrt(max(self.annual_vol**2 - (self.beta * MARKET_VOL) ** 2, 0.0))

    @property
    def price_decimals(self) -> int:
        return _decimals(self.quote_increment)

    def to_json(self) -> dict:
        """The product object of the Exchange API (GET /products/{id})."""
        return {
            "id": self.id,
            "base_currency": self.base,
            "quote_currency": self.quote,
            "quote_increment": self.quote_increment,
            "base_increment": self.base_increment,
            "display_name": f"{self.base}-{self.quote}",
            "min_market_funds": self.min_market_funds,
            "margin_enabled": False,
            "post_only": False,
            "limit_only": False,
            "cancel_only": False,
            "status": self.status,
            "status_message": self.status_message,
            "trading_disabled": self.trading_disabled,
            "fx_stablecoin": False,
            "max_slippage_percentage": "0.03000000",
            "auction_mode": False,
            "high_bid_limit_percentage": "",
        }


def _decimals(increment: str) -> int:
    return len(increment.split(".")[1].rstrip("0")) if "." in increment else 0


def _usd(pid: str, price: float, vol: float, beta: float, volume: float, missing: float, qinc: str,
         binc: str, **kw) -> ProductSpec:
    base, quote = pid.split("-")
    return ProductSpec(pid, base, quote, price, vol, beta, volume, missing, qinc, binc, **kw)


_PRODUCTS = [
    #     id          price     vol   beta  USD/day   missing qinc       binc
    _usd("BTC-USD", 87_500.0, 0.45, 0.80, 7.6e8, 0.00, "0.01", "0.00000001"),
    _usd("ETH-USD", 2_970.0, 0.68, 1.10, 2.6e8, 0.00, "0.01", "0.00000001"),
    _usd("SOL-USD", 124.5, 0.85, 1.30, 1.2e8, 0.00, "0.01", "0.00000001"),
    _usd("XRP-USD", 1.87, 0.90, 0.65, 1.5e8, 0.01, "0.0001", "0.000001"),
    _usd("ADA-USD", 0.335, 0.95, 1.20, 2.5e7, 0.03, "0.0001", "0.01"),
    _usd("DOGE-USD", 0.128, 1.05, 1.35, 4.0e7, 0.02, "0.00001", "0.1"),
    _usd("AVAX-USD", 12.2, 1.05, 1.40, 1.2e7, 0.06, "0.01", "0.00000001"),
    _usd("LINK-USD", 12.4, 0.95, 1.25, 2.0e7, 0.04, "0.001", "0.01"),
    _usd("DOT-USD", 1.78, 1.00, 1.30, 6.0e6, 0.10, "0.001", "0.01"),
    _usd("LTC-USD", 76.9, 0.80, 1.00, 1.5e7, 0.05, "0.01", "0.00000001"),
    _usd("UNI-USD", 5.6, 1.10, 1.45, 4.0e6, 0.14, "0.001", "0.000001"),
    _usd("ATOM-USD", 2.1, 1.20, 1.55, 2.5e6, 0.20, "0.001", "0.01"),
    # delisted: listed in /products, candles refused with 400 (as Coinbase does for LUNA)
    _usd("LUNA-USD", 0.000105, 1.30, 1.60, 2.0e5, 0.30, "0.000001", "0.01", status="delisted",
         status_message="delisted", trading_disabled=True),
    # online but trading disabled: candles are still served (history stays public)
    _usd("XYZ-USD", 0.42, 1.25, 1.50, 1.0e6, 0.20, "0.0001", "0.1",
         status_message="trading temporarily disabled for maintenance", trading_disabled=True),
]


def _cross(pid: str, num: ProductSpec, den: ProductSpec, volume: float, missing: float) -> ProductSpec:
    """A cross pair num/den: its vol and beta follow from the two legs' factor loadings."""
    cov = num.beta * den.beta * MARKET_VOL**2
    vol = math.sqrt(num.annual_vol**2 + den.annual_vol**2 - 2 * cov)
    base, quote = pid.split("-")
    return ProductSpec(pid, base, quote, num.start_price / den.start_price, vol, num.beta - den.beta, volume,
                       missing, quote_increment="0.00001", base_increment="0.00000001",
                       min_market_funds="0.00001", derived_from=(num.id, den.id))


UNIVERSE: dict[str, ProductSpec] = {p.id: p for p in _PRODUCTS}
UNIVERSE["ETH-BTC"] = _cross("ETH-BTC", UNIVERSE["ETH-USD"], UNIVERSE["BTC-USD"], 3.0e7, 0.01)
