-- raw.var_backtest_summary as declared in etl/warehouse/tables.yml (types are set by the raw DDL).
{{ staged('risk', 'var_backtest_summary') }}
