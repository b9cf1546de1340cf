{#- `column_name` >= `than` (a column or an expression) on every row, within `tolerance` relative to the larger
    magnitude (floor 1); a row where either side is NULL (not computable) passes. E.g. var_99 >= var_95. -#}
{% test at_least(model, column_name, than, tolerance=0.000001) %}

select *
from {{ model }}
where {{ column_name }} < {{ than }} - {{ tolerance }} * greatest(1, abs({{ column_name }}), abs({{ than }}))

{% endtest %}
