-- Correlation matrix of daily returns over the 90 days up to the as-of day, in long form (one row per pair of
-- assets, both orders and the diagonal, so it pivots into the full matrix).
with params as (
    select coalesce(nullif(:'as_of', '')::date, (select max(price_date) from gold.fact_price_daily)) as as_of
),

returns as (
    select
        daily.product_id,
        daily.price_date,
        daily.daily_return
    from gold.fact_price_daily as daily
    inner join params
        on daily.price_date <= params.as_of
        and daily.price_date > params.as_of - 90
    where daily.daily_return is not null
)

select
    a.product_id as product_id_a,
    b.product_id as product_id_b,
    round(corr(a.daily_return, b.daily_return)::numeric, 4) as correlation,
    count(*) as n_obs
from returns as a
inner join returns as b
    on a.price_date = b.price_date
group by a.product_id, b.product_id
order by a.product_id, b.product_id
