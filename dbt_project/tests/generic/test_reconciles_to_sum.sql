{#-
    Reconciliation: `column_name` of each row equals the sum of `compare_column` (a column or an expression) over
    the rows of `compare_model` with the same `keys`, within `tolerance` relative to the larger magnitude (floor 1
    currency unit); an infinite amount on either side always fails. Only keys present in both models are compared: e.g. portfolio exposures reconcile with the
    positions valued on the same day (positions are valued on the as-of day, valuations hold history).
-#}
{% test reconciles_to_sum(model, column_name, compare_model, compare_column, keys, tolerance=0.000001) %}

with totals as (

    select
        {{ keys | join(', ') }},
        sum({{ compare_column }}) as expected
    from {{ compare_model }}
    group by {{ keys | join(', ') }}

),

compared as (

    select
        {% for key in keys %}model_rows.{{ key }}, {% endfor %}
        model_rows.{{ column_name }} as actual,
        totals.expected
    from {{ model }} as model_rows
    inner join totals
        on {% for key in keys %}model_rows.{{ key }} = totals.{{ key }}{% if not loop.last %} and {% endif %}{% endfor %}

)

select *
from compared
where actual is null
    or abs(actual - expected) > {{ tolerance }} * greatest(1, abs(actual), abs(expected))
    -- an infinite amount (an overflowing book) reconciles with nothing: inf - x would hide it
    or abs(actual) = 'Infinity'
    or abs(expected) = 'Infinity'

{% endtest %}
