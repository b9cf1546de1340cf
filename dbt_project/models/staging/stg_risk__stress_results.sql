-- raw.stress_results as declared in etl/warehouse/tables.yml (types are set by the raw DDL).
{{ staged('risk', 'stress_results') }}
