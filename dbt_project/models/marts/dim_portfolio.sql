-- One row per portfolio ever loaded, with its risk limits and the size of its latest position snapshot; a retired
-- book (gone from portfolios.csv) stays, is_current false, with its attributes as last loaded.
with portfolios as (

    select * from {{ ref('stg_reference__portfolios') }}

),

positions as (

    select * from {{ ref('stg_reference__positions') }}

),

latest_snapshot as (

    select
        portfolio_id,
        max(as_of_date) as snapshot_date
    from positions
    group by portfolio_id

),

open_positions as (

    select
        positions.portfolio_id,
        count(*) as n_positions
    from positions
    inner join latest_snapshot
        on positions.portfolio_id = latest_snapshot.portfolio_id
        and positions.as_of_date = latest_snapshot.snapshot_date
    group by positions.portfolio_id

),

final as (

    select
        portfolios.portfolio_id,
        portfolios.name,
        portfolios.base_currency,
        portfolios.var_limit,
        coalesce(portfolios.var_limit_metric, 'var_99_hist') as var_limit_metric,
        portfolios.concentration_limit,
        portfolios.drawdown_limit,
        coalesce(open_positions.n_positions, 0) as n_positions,
        coalesce(portfolios.is_current, true) as is_current
    from portfolios
    left join open_positions
        on portfolios.portfolio_id = open_positions.portfolio_id

)

select * from final
