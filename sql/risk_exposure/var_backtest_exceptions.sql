-- VaR backtest per portfolio, method and confidence on the as-of day: days tested, exceptions (loss beyond the
-- forecast), observed versus expected exception rate, over the risk run's backtest window: the engine's counts of
-- that day (gold.fact_var_backtest_summary, the figures its traffic light and Kupiec test are of), never a
-- recount of gold's backtest rows (upserted by day: a later run rewrites the days its window shares). A day whose
-- forecast could not be computed was not tested: it counts in neither.
select
    summary.portfolio_id,
    summary.method,
    summary.confidence,
    summary.window_start as first_day,
    summary.window_end as last_day,
    summary.n_days,
    summary.exceptions,
    round(summary.exceptions::numeric / nullif(summary.n_days, 0), 4) as exception_rate,
    round((1 - summary.confidence)::numeric, 4) as expected_rate
from gold.fact_var_backtest_summary as summary
where summary.as_of_date = coalesce(
    nullif(:'as_of', '')::date, (select max(as_of_date) from gold.fact_var_backtest_summary)
)
order by summary.portfolio_id, summary.method, summary.confidence
