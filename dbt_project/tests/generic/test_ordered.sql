{#- The date (or number) columns are in non-decreasing order along `columns` on every row: each pair of
    neighbours must satisfy left <= right (a pair with a NULL passes, e.g. a drawdown not recovered yet). -#}
{% test ordered(model, columns) %}

select *
from {{ model }}
where false
    {% for i in range(columns | length - 1) %}
    or {{ columns[i] }} > {{ columns[i + 1] }}
    {% endfor %}

{% endtest %}
