-- raw.var_model_comparison as declared in etl/warehouse/tables.yml (types are set by the raw DDL).
{{ staged('risk', 'var_model_comparison') }}
