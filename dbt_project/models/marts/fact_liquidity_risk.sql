-- One row per portfolio per as-of day: VaR 99% plus the cost of liquidating the book against the recorded order books.
with liquidity_risk as (

    select * from {{ ref('stg_risk__liquidity_risk') }}

)

select {{ contract_columns() }}
from liquidity_risk
