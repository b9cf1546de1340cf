-- raw.limit_breaches as declared in etl/warehouse/tables.yml; rows written before breach_kind existed are
-- 'exceeded' breaches.
{{ staged('risk', 'limit_breaches', {'breach_kind': "coalesce(breach_kind, 'exceeded') as breach_kind"}) }}
