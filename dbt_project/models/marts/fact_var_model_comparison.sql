-- One row per portfolio per as-of day per VaR method per confidence: which var method passes which backtest.
with var_model_comparison as (

    select * from {{ ref('stg_risk__var_model_comparison') }}

)

select {{ contract_columns() }}
from var_model_comparison
