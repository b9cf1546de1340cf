"""Market-risk data platform for crypto portfolios: ingest -> bronze -> silver -> risk/factors -> warehouse -> report."""
