-- One row per factor per timestamp.
with factor_returns as (

    select * from {{ ref('stg_factors__factor_returns') }}

)

select {{ contract_columns() }}
from factor_returns
