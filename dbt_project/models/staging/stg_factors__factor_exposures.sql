-- raw.factor_exposures as declared in etl/warehouse/tables.yml (types are set by the raw DDL).
{{ staged('factors', 'factor_exposures') }}
