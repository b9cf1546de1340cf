-- One row per portfolio per day: market value, unrealized PnL and exposures in the portfolio's base currency.
with portfolio_valuation as (

    select * from {{ ref('stg_risk__portfolio_valuation') }}

)

select {{ contract_columns() }}
from portfolio_valuation
