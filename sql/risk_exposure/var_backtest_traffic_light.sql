-- VaR model validation on the as-of day: per portfolio, method and confidence, the exceptions over the backtest
-- window against the expected count, the Kupiec and conditional-coverage p-values and the Basel traffic light
-- (red first).
select
    summary.as_of_date,
    summary.portfolio_id,
    portfolio.name as portfolio_name,
    summary.method,
    summary.confidence,
    summary.window_start,
    summary.window_end,
    summary.n_days,
    summary.exceptions,
    round((summary.expected_exceptions)::numeric, 2) as expected_exceptions,
    round((summary.kupiec_p)::numeric, 4) as kupiec_p,
    round((summary.cc_p)::numeric, 4) as cc_p,
    summary.traffic_light
from gold.fact_var_backtest_summary as summary
inner join gold.dim_portfolio as portfolio
    on summary.portfolio_id = portfolio.portfolio_id
where summary.as_of_date = coalesce(
    nullif(:'as_of', '')::date, (select max(as_of_date) from gold.fact_var_backtest_summary)
)
order by
    case summary.traffic_light when 'red' then 0 when 'yellow' then 1 else 2 end,
    summary.portfolio_id,
    summary.method,
    summary.confidence
