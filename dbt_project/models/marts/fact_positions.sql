-- One row per portfolio per product per day: the carried-forward holding valued at the day's close.
with positions_valued as (

    select * from {{ ref('stg_risk__positions_valued') }}

)

select {{ contract_columns() }}
from positions_valued
