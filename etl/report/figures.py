"""Figures the HTML report and the cockpit derive from gold the same way (one definition, both pages read it)."""

from __future__ import annotations

import pandas as pd


def total(values: pd.Series) -> float:
    """The sum of a figure over portfolios, or NaN (shown as missing) when any of them lacks it: a partial sum or a
    sum of nothing is not the book's figure."""
    return values.astype(float).sum(min_count=len(values)) if len(values) else float("nan")


def correlation_matrix(pairs: pd.DataFrame) -> pd.DataFrame:
    """The square matrix of gold.fact_correlations rows of one day (product_id_a < product_id_b, correlation): the
    engine's figures in both orders, 1 on the diagonal; empty without pairs. Pages read it, never recompute it."""
    if pairs.empty:
        return pd.DataFrame()
    both = pd.concat([pairs, pairs.rename(columns={"product_id_a": "product_id_b", "product_id_b": "product_id_a"})])
    wide = both.pivot_table(index="product_id_a", columns="product_id_b", values="correlation", aggfunc="first")
    products = sorted(set(wide.index) | set(wide.columns))
    wide = wide.reindex(index=products, columns=products).astype(float)
    for p in products:
        wide.at[p, p] = 1.0
    wide.index.name = wide.columns.name = None
    return wide
