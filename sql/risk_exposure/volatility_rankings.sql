-- Assets ranked by annualised 30-day volatility on the as-of day, with 20-day and EWMA volatility, max drawdown
-- and worst daily return over the lookback.
select
    rank() over (order by risk.vol_30d desc nulls last) as vol_rank,
    risk.as_of_date,
    risk.product_id,
    symbol.asset_class,
    round((risk.vol_30d)::numeric, 4) as vol_30d,
    round((risk.vol_20d)::numeric, 4) as vol_20d,
    round((risk.vol_ewma)::numeric, 4) as vol_ewma,
    round((risk.max_drawdown)::numeric, 4) as max_drawdown,
    round((risk.worst_daily_return)::numeric, 6) as worst_daily_return
from gold.fact_asset_risk as risk
inner join gold.dim_symbol as symbol
    on risk.product_id = symbol.product_id
where risk.as_of_date = coalesce(nullif(:'as_of', '')::date, (select max(as_of_date) from gold.fact_asset_risk))
order by vol_rank, risk.product_id
