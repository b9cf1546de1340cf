"""The simulated product universe: metadata and the calibration targets of the price model.

Prices are anchored at REFERENCE_DATE (`start_price` is the price then) and random-walk both ways from it, so
today's prices look like today's market whatever year the simulator runs in. Vols, betas and volumes follow the
calibration in docs/simulator.md (real Coinbase BTC/ETH/SOL 5-minute candles; provenance in docs/coinbase_api.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

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
    listed_on: date | None = None    # first day with candles (None: EPOCH_DATE)
    delisted_on: date | None = None  # first day without candles (None: still trading)

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


# ---- the whole universe: synthetic products (`--universe N`) ----------------------------------------------------
# Coinbase lists about 250 USD products. Their spread, drawn deterministically per index (product i is the same
# whatever N, so `--universe 10` is a prefix of `--universe 250`), calibrated on the hand-set universe above:
# log10 USD volume/day ~ N(6.2, 1.0) clipped to [3.5, 8.7] (a few majors, a long illiquid tail); smaller products
# are more volatile and load more on the market (vol 0.55 + 0.12 per decade below 10^8.5, beta 0.9 + 0.08 per
# decade, with noise); missing-minute probability 0.08 per decade below 10^8.8 (0 for the majors, ~20% at 10^6.3
# like ATOM, ~40% at 10^4). Every 7th product (i % 7 == 3) was listed mid-history (between 2023-04 and 2025-12),
# every 25th (i % 25 == 12) is delisted (candles refused, like LUNA-USD; the model stops at `delisted_on`), and
# every 5th (i % 5 == 4) is forced into the illiquid tail (10^3.5..10^5 USD/day).
UNIVERSE_SEED = 20260101
SYNTHETIC: dict[str, ProductSpec] = {}  # registered by synthetic_products(); the price model looks them up here


def _synthetic(i: int) -> ProductSpec:
    rng = np.random.default_rng([UNIVERSE_SEED, i])
    log_volume = float(np.clip(rng.normal(6.2, 1.0), 3.5, 8.7))
    if i % 5 == 4:
        log_volume = float(rng.uniform(3.5, 5.0))
    decades = 8.5 - log_volume
    vol = float(np.clip(0.55 + 0.12 * decades + rng.normal(0, 0.12), 0.4, 2.0))
    beta = float(np.clip(0.9 + 0.08 * decades + rng.normal(0, 0.2), 0.3, 1.8))
    beta = min(beta, 0.95 * vol / MARKET_VOL)  # the market cannot explain more than the product's whole variance
    missing = float(np.clip(0.08 * (8.8 - log_volume), 0.0, 0.6))
    price = float(10 ** rng.uniform(-4, 3))
    q_dec = min(10, max(2, 4 - math.floor(math.log10(price))))  # ~5 significant digits
    b_dec = min(8, max(0, 2 + math.floor(math.log10(price))))
    listed = delisted = None
    if i % 7 == 3:
        listed = date(2023, 4, 1) + timedelta(days=int(rng.integers(0, 1000)))
    if i % 25 == 12:
        delisted = date(2024, 1, 1) + timedelta(days=int(rng.integers(0, 700)))
        listed = min(listed, delisted - timedelta(days=30)) if listed else None
    width = 3 if i < 1000 else len(str(i))
    base = f"SYN{i:0{width}d}"
    return ProductSpec(f"{base}-USD", base, "USD", round(price, q_dec), round(vol, 3), round(beta, 3),
                       float(f"{10 ** log_volume:.3g}"), round(missing, 3), f"{10.0 ** -q_dec:.{q_dec}f}",
                       f"{10.0 ** -b_dec:.{b_dec}f}" if b_dec else "1",
                       status="delisted" if delisted else "online",
                       status_message="delisted" if delisted else "", trading_disabled=bool(delisted),
                       listed_on=listed, delisted_on=delisted)


def synthetic_products(n: int) -> dict[str, ProductSpec]:
    """The first `n` synthetic products (registered for the price model), by id."""
    if n < 0:
        raise ValueError(f"universe size {n}: expected >= 0 extra products")
    specs = {spec.id: spec for spec in map(_synthetic, range(1, n + 1))}
    SYNTHETIC.update(specs)
    return specs


def product_spec(product: str) -> ProductSpec:
    """A product of the universe, synthetic ones included; KeyError if unknown."""
    spec = UNIVERSE.get(product) or SYNTHETIC.get(product)
    if spec is None:
        raise KeyError(product)
    return spec
