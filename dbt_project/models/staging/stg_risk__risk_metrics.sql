-- raw.risk_metrics as declared in etl/warehouse/tables.yml (types are set by the raw DDL).
{{ staged('risk', 'risk_metrics') }}
