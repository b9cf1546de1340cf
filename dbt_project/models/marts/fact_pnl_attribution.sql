-- One row per portfolio per day per factor (residual included): daily PnL explained by the factor model.
with pnl_attribution as (

    select * from {{ ref('stg_risk__pnl_attribution') }}

)

select {{ contract_columns() }}
from pnl_attribution
