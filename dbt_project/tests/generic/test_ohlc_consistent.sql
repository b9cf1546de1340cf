{#- OHLC consistency: low <= open, close <= high (and so low <= high). -#}
{% test ohlc_consistent(model, open='open', high='high', low='low', close='close') %}

select *
from {{ model }}
where {{ low }} > least({{ open }}, {{ close }})
    or {{ high }} < greatest({{ open }}, {{ close }})
    or {{ low }} > {{ high }}

{% endtest %}
