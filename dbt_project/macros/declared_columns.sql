{#- Column lists come from the declaration (etl/warehouse/tables.yml) through the generated YAML, never by hand. -#}

{#- A staging view: the declared columns of a raw table (its source's columns) and loaded_at, not source_file.
    `expressions` replaces a column with SQL that names its staging column, e.g. {'date': 'date as membership_date'}.
    The columns are known once dbt executes; parsing only needs the source() call. -#}
{% macro staged(source_name, table_name, expressions={}) -%}
{%- set relation = source(source_name, table_name) -%}
{%- set columns = [] -%}
{%- if execute -%}
    {%- for node in graph.sources.values() if node.source_name == source_name and node.name == table_name -%}
        {%- do columns.extend(node.columns.keys()) -%}
    {%- endfor -%}
    {%- if not columns -%}
        {{ exceptions.raise_compiler_error("source " ~ source_name ~ "." ~ table_name ~ " declares no columns: regenerate the dbt files (python -m etl.warehouse.dbt_files)") }}
    {%- endif -%}
{%- endif -%}
select
    {%- for column in columns %}
    {{ expressions.get(column, column) }}{{ "," if not loop.last }}
    {%- endfor %}
from {{ relation }}
{%- endmacro %}

{#- The columns of the current model's contract (its generated YAML), in contract order: a mart's last select.
    A unit test renders the model's SQL as a node of its own, without the contract: there it selects every column
    (the test compares the columns its expected rows name). -#}
{% macro contract_columns() -%}
    {%- if not model.columns -%}
    *
    {%- endif -%}
    {%- for column in model.columns %}
    {{ column }}{{ "," if not loop.last }}
    {%- endfor %}
{%- endmacro %}
