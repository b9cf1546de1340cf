-- VaR backtest per portfolio, method and confidence on the as-of day: days tested, exceptions (loss beyond the
-- forecast), observed versus expected exception rate, over the risk run's backtest window (the days of
-- gold.fact_var_backtest_summary's window_start..window_end: gold keeps older runs' days too, which the engine's
-- test, its traffic light and this count leave out). A day whose forecast could not be computed (NULL) was not
-- tested: it counts in neither, as in the engine's backtest summary.
select
    backtest.portfolio_id,
    backtest.method,
    backtest.confidence,
    min(backtest.as_of_date) as first_day,
    max(backtest.as_of_date) as last_day,
    count(backtest.var_forecast) as n_days,
    count(*) filter (where backtest.is_exception and backtest.var_forecast is not null) as exceptions,
    round(
        (count(*) filter (where backtest.is_exception and backtest.var_forecast is not null))::numeric
        / nullif(count(backtest.var_forecast), 0),
        4
    ) as exception_rate,
    round((1 - backtest.confidence)::numeric, 4) as expected_rate
from gold.fact_var_backtest as backtest
inner join gold.fact_var_backtest_summary as summary
    on backtest.portfolio_id = summary.portfolio_id
    and backtest.method = summary.method
    and backtest.confidence = summary.confidence
    and backtest.as_of_date between summary.window_start and summary.window_end
where summary.as_of_date = coalesce(
    nullif(:'as_of', '')::date, (select max(as_of_date) from gold.fact_var_backtest_summary)
)
group by backtest.portfolio_id, backtest.method, backtest.confidence
order by backtest.portfolio_id, backtest.method, backtest.confidence
