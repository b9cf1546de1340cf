-- One row per product per factor per day (bucket_start = the day's last timestamp): rolling OLS exposures.
with factor_exposures as (

    select * from {{ ref('stg_factors__factor_exposures') }}

)

select {{ contract_columns() }}
from factor_exposures
