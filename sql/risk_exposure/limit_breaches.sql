-- Every risk limit breached on the as-of day (VaR, concentration, drawdown) with the observed value, the limit
-- and its utilisation.
select
    breaches.as_of_date,
    breaches.portfolio_id,
    portfolio.name as portfolio_name,
    breaches.limit_type,
    breaches.metric,
    -- fraction limits (etl/measures.py LIMITS) to 4 decimals; var and lvar are amounts in base currency
    round(breaches.value::numeric, case when breaches.limit_type in ('concentration', 'drawdown') then 4 else money.dp end) as value,
    round(breaches.limit_value::numeric, case when breaches.limit_type in ('concentration', 'drawdown') then 4 else money.dp end) as limit_value,
    round((breaches.utilisation)::numeric, 4) as utilisation
from gold.fact_limit_breaches as breaches
inner join gold.dim_portfolio as portfolio
    on breaches.portfolio_id = portfolio.portfolio_id
cross join lateral (select coalesce(breaches.base_currency, portfolio.base_currency) as base_currency) as ccy  -- the row's currency (its run's), not today's dim_portfolio
cross join lateral (select case when ccy.base_currency = 'USD' then 2 else 8 end as dp) as money  -- cents; satoshis in a crypto currency
where breaches.as_of_date = coalesce(nullif(:'as_of', '')::date, (select max(as_of_date) from gold.fact_limit_breaches))
order by breaches.utilisation desc nulls last, breaches.portfolio_id
