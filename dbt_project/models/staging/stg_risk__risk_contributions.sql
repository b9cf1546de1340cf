-- raw.risk_contributions as declared in etl/warehouse/tables.yml (types are set by the raw DDL).
{{ staged('risk', 'risk_contributions') }}
