-- 1-day VaR and ES (95/99, historical, parametric, Monte Carlo) per portfolio on the as-of day, with the VaR
-- limit, the metric it applies to and its utilisation (> 1 = breached).
select
    latest.as_of_date,
    latest.portfolio_id,
    portfolio.name as portfolio_name,
    portfolio.base_currency,
    latest.var_95_hist,
    latest.var_99_hist,
    latest.es_95_hist,
    latest.es_99_hist,
    latest.var_95_param,
    latest.var_99_param,
    latest.es_95_param,
    latest.es_99_param,
    latest.var_95_mc,
    latest.var_99_mc,
    latest.es_95_mc,
    latest.es_99_mc,
    portfolio.var_limit,
    portfolio.var_limit_metric,
    case portfolio.var_limit_metric
        when 'var_95_hist' then latest.var_95_hist
        when 'var_99_hist' then latest.var_99_hist
        when 'var_95_param' then latest.var_95_param
        when 'var_99_param' then latest.var_99_param
        when 'var_95_mc' then latest.var_95_mc
        when 'var_99_mc' then latest.var_99_mc
    end / nullif(portfolio.var_limit, 0) as var_limit_utilisation
from gold.fact_risk_metrics as latest
inner join gold.dim_portfolio as portfolio
    on latest.portfolio_id = portfolio.portfolio_id
where latest.as_of_date = coalesce(nullif(:'as_of', '')::date, (select max(as_of_date) from gold.fact_risk_metrics))
order by latest.var_99_hist desc nulls last
