{#- Prices and costs must be strictly positive (NULL is left to not_null). -#}
{% test positive(model, column_name) %}

select *
from {{ model }}
where {{ column_name }} <= 0

{% endtest %}
