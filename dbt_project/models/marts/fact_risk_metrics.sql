-- One row per portfolio per day: 1-day VaR/ES by method and confidence, volatilities and drawdown.
with risk_metrics as (

    select * from {{ ref('stg_risk__risk_metrics') }}

)

select {{ contract_columns() }}
from risk_metrics
