-- One row per scope (portfolio | firm) per portfolio per scenario per as-of day: stress test pnl of today's book.
with stress_results as (

    select * from {{ ref('stg_risk__stress_results') }}

)

select {{ contract_columns() }}
from stress_results
