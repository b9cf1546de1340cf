-- Portfolios whose largest single-asset share of gross exposure breached their concentration limit on the as-of
-- day (the risk run's breaches, gold.fact_limit_breaches: exceeded, or uncomputable and listed first), with the
-- asset responsible.
with params as (
    select coalesce(nullif(:'as_of', '')::date, (select max(as_of_date) from gold.fact_portfolio_valuation)) as as_of
),

breaches as (
    select
        limits.portfolio_id,
        limits.as_of_date,
        limits.value,
        limits.limit_value,
        limits.breach_kind,
        limits.base_currency
    from gold.fact_limit_breaches as limits
    inner join params
        on limits.as_of_date = params.as_of
    where limits.limit_type = 'concentration'
),

largest_position as (
    select distinct on (positions.portfolio_id)
        positions.portfolio_id,
        positions.product_id,
        positions.market_value
    from gold.fact_positions as positions
    inner join params
        on positions.as_of_date = params.as_of
    order by positions.portfolio_id, abs(positions.market_value) desc nulls last
)

select
    breaches.as_of_date,
    breaches.portfolio_id,
    portfolio.name as portfolio_name,
    breaches.breach_kind,
    round((breaches.value)::numeric, 4) as concentration_pct,
    round((breaches.limit_value)::numeric, 4) as concentration_limit,
    round((breaches.value - breaches.limit_value)::numeric, 4) as excess,
    largest_position.product_id as largest_product_id,
    round((largest_position.market_value)::numeric, money.dp) as largest_market_value,
    round((valuation.gross_exposure)::numeric, money.dp) as gross_exposure
from breaches
inner join gold.dim_portfolio as portfolio
    on breaches.portfolio_id = portfolio.portfolio_id
cross join lateral (select coalesce(breaches.base_currency, portfolio.base_currency) as base_currency) as ccy  -- the row's currency (its run's), not today's dim_portfolio
cross join lateral (select case when ccy.base_currency = 'USD' then 2 else 8 end as dp) as money  -- cents; satoshis in a crypto currency
left join gold.fact_portfolio_valuation as valuation
    on breaches.portfolio_id = valuation.portfolio_id
    and breaches.as_of_date = valuation.as_of_date
left join largest_position
    on breaches.portfolio_id = largest_position.portfolio_id
order by excess desc nulls first, breaches.portfolio_id
