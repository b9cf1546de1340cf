-- One row per portfolio per day per limit type per metric that breached its limit: exceeded it, or could not be
-- computed (breach_kind 'uncomputable', value NULL: a NaN/inf metric never passes a limit).
with limit_breaches as (

    select * from {{ ref('stg_risk__limit_breaches') }}

),

final as (

    select
        *,
        value / nullif(limit_value, 0) as utilisation
    from limit_breaches

)

select {{ contract_columns() }}
from final
