-- Portfolios whose largest single-asset share of gross exposure exceeds their concentration limit on the as-of
-- day, with the asset responsible.
with params as (
    select coalesce(nullif(:'as_of', '')::date, (select max(as_of_date) from gold.fact_portfolio_valuation)) as as_of
),

largest_position as (
    select distinct on (positions.portfolio_id)
        positions.portfolio_id,
        positions.product_id,
        positions.market_value
    from gold.fact_positions as positions
    inner join params
        on positions.as_of_date = params.as_of
    order by positions.portfolio_id, abs(positions.market_value) desc
)

select
    valuation.as_of_date,
    valuation.portfolio_id,
    portfolio.name as portfolio_name,
    round((valuation.concentration_pct)::numeric, 4) as concentration_pct,
    round((portfolio.concentration_limit)::numeric, 4) as concentration_limit,
    round((valuation.concentration_pct - portfolio.concentration_limit)::numeric, 4) as excess,
    largest_position.product_id as largest_product_id,
    round((largest_position.market_value)::numeric, money.dp) as largest_market_value,
    round((valuation.gross_exposure)::numeric, money.dp) as gross_exposure
from gold.fact_portfolio_valuation as valuation
inner join params
    on valuation.as_of_date = params.as_of
inner join gold.dim_portfolio as portfolio
    on valuation.portfolio_id = portfolio.portfolio_id
cross join lateral (select case when portfolio.base_currency = 'USD' then 2 else 8 end as dp) as money  -- cents; satoshis in a crypto currency
left join largest_position
    on valuation.portfolio_id = largest_position.portfolio_id
where valuation.concentration_pct > portfolio.concentration_limit
order by excess desc
