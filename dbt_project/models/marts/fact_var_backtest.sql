-- One row per portfolio per day per VaR method per confidence: the forecast against the realized PnL.
with var_backtest as (

    select * from {{ ref('stg_risk__var_backtest') }}

)

select {{ contract_columns() }}
from var_backtest
