-- Worst daily (close-to-close) return of each asset up to the as-of day, the day it happened, and the latest close.
with history as (
    select daily.*
    from gold.fact_price_daily as daily
    where daily.price_date <= coalesce(nullif(:'as_of', '')::date, (select max(price_date) from gold.fact_price_daily))
),

worst as (
    select distinct on (product_id)
        product_id,
        price_date as worst_day,
        daily_return as worst_daily_return
    from history
    where daily_return is not null
    order by product_id, daily_return asc
),

latest as (
    select distinct on (product_id)
        product_id,
        price_date as last_day,
        close as last_close
    from history
    order by product_id, price_date desc
)

select
    worst.product_id,
    worst.worst_day,
    round((worst.worst_daily_return)::numeric, 6) as worst_daily_return,
    latest.last_day,
    round((latest.last_close)::numeric, 8) as last_close
from worst
inner join latest
    on worst.product_id = latest.product_id
order by worst.worst_daily_return asc
