-- raw.factor_returns as declared in etl/warehouse/tables.yml (types are set by the raw DDL).
{{ staged('factors', 'factor_returns') }}
