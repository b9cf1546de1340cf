-- One row per pair of products per as-of day: correlation of daily returns over the risk lookback.
with correlations as (

    select * from {{ ref('stg_risk__correlations') }}

)

select {{ contract_columns() }}
from correlations
