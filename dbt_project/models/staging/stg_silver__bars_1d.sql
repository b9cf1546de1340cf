-- raw.bars_1d as declared in etl/warehouse/tables.yml (types are set by the raw DDL).
{{ staged('silver', 'bars_1d') }}
