-- One row per portfolio per as-of day per VaR method per confidence: backtest statistics over the window.
with var_backtest_summary as (

    select * from {{ ref('stg_risk__var_backtest_summary') }}

)

select {{ contract_columns() }}
from var_backtest_summary
