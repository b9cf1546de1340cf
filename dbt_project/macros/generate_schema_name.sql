{#- Use the configured schema name as is (staging, gold) instead of dbt's default <target_schema>_<custom>.
    `--vars '{"gold_schema": "gold__shadow"}'` redirects the gold marts to the shadow schema of a write-audit-publish
    build (etl/warehouse/dbt.py): they are built and tested there, then swapped in for gold. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- elif custom_schema_name | trim == 'gold' -%}
        {{ var('gold_schema', 'gold') }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
