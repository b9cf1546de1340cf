-- raw.exchanges as declared in etl/warehouse/tables.yml (types are set by the raw DDL).
{{ staged('reference', 'exchanges', {'is_current': 'coalesce(is_current, true) as is_current'}) }}
