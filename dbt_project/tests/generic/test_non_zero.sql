{#- A position of size zero is not a holding (closed positions are omitted, not stored as 0). -#}
{% test non_zero(model, column_name) %}

select *
from {{ model }}
where {{ column_name }} = 0

{% endtest %}
