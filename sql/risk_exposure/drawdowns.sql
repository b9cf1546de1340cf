-- Maximum drawdown of every portfolio over the risk lookback on the as-of day, worst first: peak, trough and
-- recovery days; the drawdown limit and how much of it the current drawdown from the running peak uses
-- (drawdown_from_peak, the measure the limit is checked on; breach above 1), the limit the risk run checked.
select
    drawdowns.as_of_date,
    drawdowns.portfolio_id,
    portfolio.name as portfolio_name,
    portfolio.base_currency,
    round((drawdowns.max_drawdown)::numeric, 4) as max_drawdown,
    round((risk.checked_drawdown_limit)::numeric, 4) as drawdown_limit,
    round((-risk.drawdown_from_peak / nullif(risk.checked_drawdown_limit, 0))::numeric, 4) as limit_utilisation,
    round((risk.drawdown_from_peak)::numeric, 4) as drawdown_from_peak,
    drawdowns.peak_date,
    drawdowns.trough_date,
    drawdowns.drawdown_days,
    drawdowns.recovery_date,
    drawdowns.recovery_days,
    drawdowns.is_recovered,
    drawdowns.window_start,
    drawdowns.window_end
from gold.fact_drawdowns as drawdowns
inner join gold.dim_portfolio as portfolio
    on drawdowns.portfolio_id = portfolio.portfolio_id
left join gold.fact_risk_metrics as risk
    on drawdowns.portfolio_id = risk.portfolio_id
    and drawdowns.as_of_date = risk.as_of_date
where drawdowns.entity_type = 'portfolio'
    and drawdowns.as_of_date = coalesce(
        nullif(:'as_of', '')::date,
        (select max(as_of_date) from gold.fact_drawdowns where entity_type = 'portfolio')
    )
order by drawdowns.max_drawdown, drawdowns.portfolio_id
