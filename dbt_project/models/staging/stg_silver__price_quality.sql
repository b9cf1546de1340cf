-- raw.price_quality as declared in etl/warehouse/tables.yml (types are set by the raw DDL).
{{ staged('silver', 'price_quality') }}
