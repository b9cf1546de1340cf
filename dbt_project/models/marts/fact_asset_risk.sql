-- One row per product per day: volatilities, drawdown and worst daily return of the asset.
with asset_risk as (

    select * from {{ ref('stg_risk__asset_risk') }}

)

select {{ contract_columns() }}
from asset_risk
