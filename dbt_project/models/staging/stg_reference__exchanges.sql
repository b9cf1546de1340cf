-- raw.exchanges as declared in etl/warehouse/tables.yml (types are set by the raw DDL).
{{ staged('reference', 'exchanges') }}
