-- Every risk limit breached on the as-of day (VaR, concentration, drawdown) with the observed value, the limit
-- and its utilisation.
select
    breaches.as_of_date,
    breaches.portfolio_id,
    portfolio.name as portfolio_name,
    breaches.limit_type,
    breaches.metric,
    breaches.value,
    breaches.limit_value,
    breaches.utilisation
from gold.fact_limit_breaches as breaches
inner join gold.dim_portfolio as portfolio
    on breaches.portfolio_id = portfolio.portfolio_id
where breaches.as_of_date = coalesce(nullif(:'as_of', '')::date, (select max(as_of_date) from gold.fact_limit_breaches))
order by breaches.utilisation desc nulls last, breaches.portfolio_id
