-- Performance summary per portfolio up to the as-of day: total and month-to-date PnL, best and worst day, share
-- of positive days, mean and volatility of daily PnL, annualised Sharpe-like ratio of daily returns, max drawdown.
-- A day whose PnL is unknown (NULL: e.g. an unpriced holding) makes the total unknown (NULL), as the engine's MTD:
-- never the sum of the other days; the day statistics are of the known days (n_days counts them). A NULL on the
-- book's first day in gold (no previous close) is no PnL before the history, not an unknown day.
with history as (
    select
        pnl.*,
        pnl.daily_pnl is null
            and pnl.as_of_date > min(pnl.as_of_date) over (partition by pnl.portfolio_id) as is_unknown
    from gold.fact_pnl_daily as pnl
    where pnl.as_of_date <= coalesce(nullif(:'as_of', '')::date, (select max(as_of_date) from gold.fact_pnl_daily))
),

stats as (
    select
        portfolio_id,
        min(as_of_date) as first_day,
        max(as_of_date) as last_day,
        count(daily_pnl) as n_days,
        case when not bool_or(is_unknown) then sum(daily_pnl) end as total_pnl,
        max(daily_pnl) as best_day_pnl,
        min(daily_pnl) as worst_day_pnl,
        avg(case when daily_pnl > 0 then 1.0 when daily_pnl <= 0 then 0.0 end)::double precision as positive_day_share,
        avg(daily_pnl) as mean_daily_pnl,
        stddev_samp(daily_pnl) as stdev_daily_pnl,
        avg(daily_return) / nullif(stddev_samp(daily_return), 0) as sharpe_daily
    from history
    group by portfolio_id
)

select
    stats.portfolio_id,
    portfolio.name as portfolio_name,
    portfolio.base_currency,
    stats.first_day,
    stats.last_day,
    stats.n_days,
    round((stats.total_pnl)::numeric, money.dp) as total_pnl,
    round((latest.mtd_pnl)::numeric, money.dp) as mtd_pnl,
    round((stats.best_day_pnl)::numeric, money.dp) as best_day_pnl,
    round((stats.worst_day_pnl)::numeric, money.dp) as worst_day_pnl,
    round((stats.positive_day_share)::numeric, 4) as positive_day_share,
    round((stats.mean_daily_pnl)::numeric, money.dp) as mean_daily_pnl,
    round((stats.stdev_daily_pnl)::numeric, money.dp) as stdev_daily_pnl,
    -- annualised as the risk run annualises its volatilities (RISK_ANNUALIZATION_DAYS, on its risk row)
    round((stats.sharpe_daily * sqrt(risk.annualization_days))::numeric, 2) as sharpe_annualised,
    round((risk.max_drawdown)::numeric, 4) as max_drawdown
from stats
inner join gold.dim_portfolio as portfolio
    on stats.portfolio_id = portfolio.portfolio_id
cross join lateral (select case when portfolio.base_currency = 'USD' then 2 else 8 end as dp) as money  -- cents; satoshis in a crypto currency
left join gold.fact_pnl_daily as latest
    on stats.portfolio_id = latest.portfolio_id
    and stats.last_day = latest.as_of_date
left join gold.fact_risk_metrics as risk
    on stats.portfolio_id = risk.portfolio_id
    and stats.last_day = risk.as_of_date
order by stats.total_pnl desc nulls last
