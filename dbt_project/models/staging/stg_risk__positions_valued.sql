-- raw.positions_valued as declared in etl/warehouse/tables.yml (types are set by the raw DDL).
{{ staged('risk', 'positions_valued') }}
