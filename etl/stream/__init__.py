"""Live market data over Coinbase's WebSocket feed (docs/streaming.md).

Modules: `feed` (the client: subscribe, reconnect, gap detection), `sinks` (micro-batches and where they go:
`BronzeSink`), `collector` (`collect`, behind `python -m etl stream`), `forecast` (the online mid-price model) and
`insights` (`python -m etl insights`, the live terminal view).
"""
