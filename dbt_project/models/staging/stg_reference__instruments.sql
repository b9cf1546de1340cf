-- raw.instruments as declared in etl/warehouse/tables.yml (types are set by the raw DDL).
{{ staged('reference', 'instruments', {'is_current': 'coalesce(is_current, true) as is_current'}) }}
