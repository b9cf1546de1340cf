-- Correlation matrix of daily returns as the risk engine stored it for the as-of day (gold.fact_correlations: simple
-- daily USD returns over the VaR lookback, docs/risk_conventions.md), in long form: one row per pair of assets, both
-- orders and the diagonal, so it pivots into the full matrix.
with params as (
    select coalesce(nullif(:'as_of', '')::date, (select max(as_of_date) from gold.fact_correlations)) as as_of
),

pairs as (
    select
        corr.product_id_a,
        corr.product_id_b,
        corr.correlation,
        corr.n_obs
    from gold.fact_correlations as corr
    inner join params
        on corr.as_of_date = params.as_of
),

products as (
    select product_id_a as product_id, n_obs from pairs
    union
    select product_id_b as product_id, n_obs from pairs
),

both_orders as (
    select product_id_a, product_id_b, correlation, n_obs from pairs
    union all
    select product_id_b, product_id_a, correlation, n_obs from pairs
    union all
    select product_id, product_id, 1.0, n_obs from products
)

select
    product_id_a,
    product_id_b,
    round(correlation::numeric, 4) as correlation,
    n_obs
from both_orders
order by product_id_a, product_id_b
