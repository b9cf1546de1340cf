-- Daily and month-to-date PnL per portfolio on the as-of day, with market value, gross exposure and the day's
-- return on the previous day's gross exposure (base currency of each portfolio).
select
    pnl.as_of_date,
    pnl.portfolio_id,
    portfolio.name as portfolio_name,
    ccy.base_currency,
    round((pnl.daily_pnl)::numeric, money.dp) as daily_pnl,
    round((pnl.mtd_pnl)::numeric, money.dp) as mtd_pnl,
    round((pnl.cumulative_pnl)::numeric, money.dp) as cumulative_pnl,
    round((pnl.daily_return)::numeric, 6) as daily_return,
    round((valuation.market_value)::numeric, money.dp) as market_value,
    round((valuation.gross_exposure)::numeric, money.dp) as gross_exposure,
    round((valuation.unrealized_pnl)::numeric, money.dp) as unrealized_pnl
from gold.fact_pnl_daily as pnl
inner join gold.dim_portfolio as portfolio
    on pnl.portfolio_id = portfolio.portfolio_id
cross join lateral (select coalesce(pnl.base_currency, portfolio.base_currency) as base_currency) as ccy  -- the row's currency (its run's), not today's dim_portfolio
cross join lateral (select case when ccy.base_currency = 'USD' then 2 else 8 end as dp) as money  -- cents; satoshis in a crypto currency
left join gold.fact_portfolio_valuation as valuation
    on pnl.portfolio_id = valuation.portfolio_id
    and pnl.as_of_date = valuation.as_of_date
where pnl.as_of_date = coalesce(nullif(:'as_of', '')::date, (select max(as_of_date) from gold.fact_pnl_daily))
order by pnl.daily_pnl desc nulls last, pnl.portfolio_id
