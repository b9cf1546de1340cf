-- raw.intraday_limit_breaches as declared in etl/warehouse/tables.yml (types are set by the raw DDL).
{{ staged('risk', 'intraday_limit_breaches') }}
