-- One row per exchange.
with exchanges as (

    select * from {{ ref('stg_reference__exchanges') }}

)

select {{ contract_columns() }}
from exchanges
