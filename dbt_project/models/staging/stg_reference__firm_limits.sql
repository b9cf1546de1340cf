-- raw.firm_limits as declared in etl/warehouse/tables.yml (types are set by the raw DDL).
{{ staged('reference', 'firm_limits') }}
