-- raw.pnl_attribution as declared in etl/warehouse/tables.yml (types are set by the raw DDL).
{{ staged('risk', 'pnl_attribution') }}
