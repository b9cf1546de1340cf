-- raw.run_inputs as declared in etl/warehouse/tables.yml (types are set by the raw DDL).
{{ staged('ops', 'run_inputs') }}
