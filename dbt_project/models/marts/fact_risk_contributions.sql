-- One row per scope (portfolio | firm) per portfolio per product per as-of day: euler risk contributions.
with risk_contributions as (

    select * from {{ ref('stg_risk__risk_contributions') }}

)

select {{ contract_columns() }}
from risk_contributions
