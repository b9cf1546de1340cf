-- raw.pipeline_runs as declared in etl/warehouse/tables.yml (types are set by the raw DDL).
{{ staged('ops', 'pipeline_runs') }}
