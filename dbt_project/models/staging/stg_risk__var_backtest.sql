-- raw.var_backtest as declared in etl/warehouse/tables.yml (types are set by the raw DDL).
{{ staged('risk', 'var_backtest') }}
