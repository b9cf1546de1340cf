-- raw.breach_actions as declared in etl/warehouse/tables.yml (types are set by the raw DDL).
{{ staged('ops', 'breach_actions') }}
