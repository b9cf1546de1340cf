-- Daily and month-to-date PnL per portfolio on the as-of day, with market value, gross exposure and the day's
-- return on the previous day's gross exposure (base currency of each portfolio).
select
    pnl.as_of_date,
    pnl.portfolio_id,
    portfolio.name as portfolio_name,
    portfolio.base_currency,
    pnl.daily_pnl,
    pnl.mtd_pnl,
    pnl.cumulative_pnl,
    pnl.daily_return,
    valuation.market_value,
    valuation.gross_exposure,
    valuation.unrealized_pnl
from gold.fact_pnl_daily as pnl
inner join gold.dim_portfolio as portfolio
    on pnl.portfolio_id = portfolio.portfolio_id
left join gold.fact_portfolio_valuation as valuation
    on pnl.portfolio_id = valuation.portfolio_id
    and pnl.as_of_date = valuation.as_of_date
where pnl.as_of_date = coalesce(nullif(:'as_of', '')::date, (select max(as_of_date) from gold.fact_pnl_daily))
order by pnl.daily_pnl desc nulls last, pnl.portfolio_id
