-- raw.intraday_limit_breaches as declared in etl/warehouse/tables.yml (types are set by the raw DDL); breach rows
-- written before breach_kind existed were all 'exceeded' (a NaN metric wrote no breach then).
{{ staged('risk', 'intraday_limit_breaches', {'breach_kind': "case when status = 'breach' then coalesce(breach_kind, 'exceeded') end as breach_kind"}) }}
