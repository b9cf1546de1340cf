-- 1-day VaR and ES (95/99, historical, parametric, Monte Carlo) per portfolio on the as-of day, with the VaR
-- limit the risk run checked, the metric it applies to and its utilisation (> 1 = breached, as the run's breach
-- rows: its risk row records them, not dim_portfolio's limits of today); largest VaR 99% in USD first.
select
    latest.as_of_date,
    latest.portfolio_id,
    portfolio.name as portfolio_name,
    ccy.base_currency,
    round((latest.var_95_hist)::numeric, money.dp) as var_95_hist,
    round((latest.var_99_hist)::numeric, money.dp) as var_99_hist,
    round((latest.es_95_hist)::numeric, money.dp) as es_95_hist,
    round((latest.es_99_hist)::numeric, money.dp) as es_99_hist,
    round((latest.var_95_param)::numeric, money.dp) as var_95_param,
    round((latest.var_99_param)::numeric, money.dp) as var_99_param,
    round((latest.es_95_param)::numeric, money.dp) as es_95_param,
    round((latest.es_99_param)::numeric, money.dp) as es_99_param,
    round((latest.var_95_mc)::numeric, money.dp) as var_95_mc,
    round((latest.var_99_mc)::numeric, money.dp) as var_99_mc,
    round((latest.es_95_mc)::numeric, money.dp) as es_95_mc,
    round((latest.es_99_mc)::numeric, money.dp) as es_99_mc,
    round((latest.checked_var_limit)::numeric, money.dp) as var_limit,
    latest.checked_var_limit_metric as var_limit_metric,
    -- the column the limit names, whichever registered method it is (etl/measures.py)
    round(((to_jsonb(latest) ->> latest.checked_var_limit_metric)::numeric / nullif(latest.checked_var_limit, 0)::numeric), 4)
        as var_limit_utilisation,
    -- ranks books of different currencies: the engine's VaR 99% x the as-of close of <base>-USD
    round((latest.var_99_hist_usd)::numeric, 2) as var_99_hist_usd
from gold.fact_risk_metrics as latest
inner join gold.dim_portfolio as portfolio
    on latest.portfolio_id = portfolio.portfolio_id
cross join lateral (select coalesce(latest.base_currency, portfolio.base_currency) as base_currency) as ccy  -- the row's currency (its run's), not today's dim_portfolio
cross join lateral (select case when ccy.base_currency = 'USD' then 2 else 8 end as dp) as money  -- cents; satoshis in a crypto currency
where latest.as_of_date = coalesce(nullif(:'as_of', '')::date, (select max(as_of_date) from gold.fact_risk_metrics))
order by var_99_hist_usd desc nulls last, latest.portfolio_id
