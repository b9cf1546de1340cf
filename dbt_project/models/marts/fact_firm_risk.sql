-- One row per as-of day (the whole book in USD as one portfolio): firm-level var/es of every method at 95/99 and the diversification benefit (sum of standalone var minus firm var), in usd.
with firm_risk as (

    select * from {{ ref('stg_risk__firm_risk') }}

)

select {{ contract_columns() }}
from firm_risk
