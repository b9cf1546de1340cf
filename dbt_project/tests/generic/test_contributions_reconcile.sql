{#-
    Euler reconciliation: the contributions `column_name` of the rows of `model` in `scope`, summed per `keys`,
    equal `total_column` of `totals_model` on the same keys, within `tolerance` relative to the larger magnitude
    (floor 1 currency unit). A key with contributions but no total, or a total with positions but no
    contributions, fails too (both sides must hold the same keys). Totals are compared on the days (`as_of_date`,
    else every key) the contributions cover: a portfolio with none of its contributions on such a day fails, even
    when it has none on any day.
-#}
{% test contributions_reconcile(model, column_name, totals_model, total_column, keys, scope, tolerance=0.000001) %}

with components as (

    select
        {{ keys | join(', ') }},
        sum({{ column_name }}) as component_sum
    from {{ model }}
    where scope = '{{ scope }}'
    group by {{ keys | join(', ') }}

),

totals as (

    select
        {{ keys | join(', ') }},
        {{ total_column }} as total
    from {{ totals_model }}
    where {{ total_column }} <> 0

),

compared as (

    select
        {% for key in keys %}coalesce(components.{{ key }}, totals.{{ key }}) as {{ key }}, {% endfor %}
        components.component_sum,
        totals.total
    from components
    full outer join totals
        on {% for key in keys %}components.{{ key }} = totals.{{ key }}{% if not loop.last %} and {% endif %}{% endfor %}
    {%- set covered = ['as_of_date'] if 'as_of_date' in keys else keys %}
    where {% for key in covered %}coalesce(components.{{ key }}, totals.{{ key }}) in (select {{ key }} from components){% if not loop.last %} and {% endif %}{% endfor %}

)

select *
from compared
where component_sum is null
    or total is null
    or abs(component_sum - total) > {{ tolerance }} * greatest(1, abs(component_sum), abs(total))

{% endtest %}
