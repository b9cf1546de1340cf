-- Top 5 gaining and top 5 losing positions of the as-of day across all portfolios: each position's PnL of the
-- day in its portfolio's currency (the engine's: its term of the portfolio's daily PnL, the previous close's
-- quantity x the move of the price in base currency; a book's positions add up to its daily_pnl) and in USD
-- (x the close of <base>-USD the engine carries on the day: the latest on or before it; 1 for USD books), which
-- ranks them: books of different currencies compare. A position whose book has no <base>-USD close at all is
-- listed as 'no USD rate' (USD PnL NULL), never left out.
with contributions as (
    select
        positions.as_of_date,
        positions.portfolio_id,
        positions.product_id,
        positions.quantity,
        positions.market_value,
        prices.daily_return,
        ccy.base_currency,
        positions.daily_pnl as position_pnl,
        case when ccy.base_currency = 'USD' then 1.0 else usd.close end as usd_rate
    from gold.fact_positions as positions
    left join gold.fact_price_daily as prices
        on positions.product_id = prices.product_id
        and positions.as_of_date = prices.price_date
    inner join gold.dim_portfolio as portfolio
        on positions.portfolio_id = portfolio.portfolio_id
    -- the currency the position's figures are in (its run's), not dim_portfolio's, which is today's
    cross join lateral (select coalesce(positions.base_currency, portfolio.base_currency) as base_currency) as ccy
    left join lateral (
        select rate.close
        from gold.fact_price_daily as rate
        where rate.product_id = ccy.base_currency || '-USD'
            and rate.price_date <= positions.as_of_date
        order by rate.price_date desc
        limit 1
    ) as usd on true
    where positions.as_of_date = coalesce(nullif(:'as_of', '')::date, (select max(as_of_date) from gold.fact_positions))
        and positions.daily_pnl is not null
),

ranked as (
    select
        *,
        position_pnl * usd_rate as position_pnl_usd,
        row_number() over (order by position_pnl * usd_rate desc nulls last) as gain_rank,
        row_number() over (order by position_pnl * usd_rate asc nulls last) as loss_rank
    from contributions
)

select
    case when position_pnl_usd is null then 'no USD rate'
        when gain_rank <= 5 and position_pnl_usd > 0 then 'gainer' else 'loser' end as mover,
    case when position_pnl_usd is null then null
        when gain_rank <= 5 and position_pnl_usd > 0 then gain_rank else loss_rank end as mover_rank,
    as_of_date,
    ranked.portfolio_id,
    product_id,
    ranked.base_currency,
    round((ranked.quantity)::numeric, 8) as quantity,
    round((ranked.market_value)::numeric, money.dp) as market_value,
    round((ranked.daily_return)::numeric, 6) as daily_return,
    round((ranked.position_pnl)::numeric, money.dp) as position_pnl,
    round((ranked.position_pnl_usd)::numeric, 2) as position_pnl_usd
from ranked
cross join lateral (select case when ranked.base_currency = 'USD' then 2 else 8 end as dp) as money  -- cents; satoshis in a crypto currency
where (gain_rank <= 5 and position_pnl_usd > 0)
    or (loss_rank <= 5 and position_pnl_usd < 0)
    or position_pnl_usd is null
order by mover, mover_rank, ranked.portfolio_id, product_id
