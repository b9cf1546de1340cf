"""Offline stand-in for Coinbase Exchange's public REST API (contract: docs/coinbase_api.md).

- `candles(seed, product, start, end, granularity)`: the pure price model (no HTTP), for expected values.
- `Simulator(SimulatorConfig(...)).start()`: an in-process HTTP server for tests; `serve(config)` blocks (CLI).
- `UNIVERSE`: product metadata and calibration targets; `synthetic_products(n)`: the `--universe N` extras.
See docs/simulator.md for the model, its calibration, the faults and how to run it.
"""

from etl.simulator.price_model import GRANULARITIES, aggregate, candle_arrays, candles
from etl.simulator.server import LATE_CORRECTION_MINUTES, Simulator, SimulatorConfig, serve
from etl.simulator.universe import UNIVERSE, ProductSpec, synthetic_products

__all__ = [
    "GRANULARITIES", "LATE_CORRECTION_MINUTES", "UNIVERSE", "ProductSpec", "Simulator", "SimulatorConfig",
    "aggregate", "candle_arrays", "candles", "serve", "synthetic_products",
]
