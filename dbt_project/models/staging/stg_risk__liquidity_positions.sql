-- raw.liquidity_positions as declared in etl/warehouse/tables.yml (types are set by the raw DDL).
{{ staged('risk', 'liquidity_positions') }}
