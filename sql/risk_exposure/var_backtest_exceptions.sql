-- VaR backtest per portfolio, method and confidence over the days up to the as-of day: days tested, exceptions
-- (loss beyond the forecast), observed versus expected exception rate. A day without a VaR forecast (NULL:
-- uncomputable that day) is not tested, as in the risk engine's backtest summary.
select
    backtest.portfolio_id,
    backtest.method,
    backtest.confidence,
    min(backtest.as_of_date) as first_day,
    max(backtest.as_of_date) as last_day,
    count(*) as n_days,
    count(*) filter (where backtest.is_exception) as exceptions,
    round(avg(case when backtest.is_exception then 1.0 else 0.0 end), 4) as exception_rate,
    round((1 - backtest.confidence)::numeric, 4) as expected_rate
from gold.fact_var_backtest as backtest
where backtest.as_of_date <= coalesce(nullif(:'as_of', '')::date, (select max(as_of_date) from gold.fact_var_backtest))
    and backtest.var_forecast is not null
group by backtest.portfolio_id, backtest.method, backtest.confidence
order by backtest.portfolio_id, backtest.method, backtest.confidence
