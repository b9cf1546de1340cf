-- raw.portfolio_valuation as declared in etl/warehouse/tables.yml (types are set by the raw DDL).
{{ staged('risk', 'portfolio_valuation') }}
