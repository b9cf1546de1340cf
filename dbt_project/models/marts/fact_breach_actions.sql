-- One row per action on a limit breach (acknowledge, raise_limit) taken in the risk cockpit by a logged-in
-- Airflow user: who, when, why and until when (etl/report/breach_actions.py writes the log raw loads).
with breach_actions as (

    select * from {{ ref('stg_ops__breach_actions') }}

),

final as (

    select * from breach_actions

)

select {{ contract_columns() }}
from final
