-- One row per firm-level limit (the whole book's risk in USD, gold.fact_firm_risk).
with firm_limits as (

    select * from {{ ref('stg_reference__firm_limits') }}

)

select {{ contract_columns() }}
from firm_limits
