-- raw.bars_5m as declared in etl/warehouse/tables.yml (types are set by the raw DDL).
{{ staged('silver', 'bars_5m') }}
