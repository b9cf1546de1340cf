{#-
    Risk measure coherence for each method: VaR 99% >= VaR 95%, ES 95% >= VaR 95%, ES 99% >= VaR 99%
    (columns var_<level>_<method>, es_<level>_<method>), within a small relative tolerance for Monte Carlo noise.
    Rows where a measure is NULL (not computable) pass. Fails with one row per broken rule.
-#}
{% test var_es_ordering(model, methods=['hist', 'param', 'mc'], tolerance=0.000001) %}

{% set rules = [] %}
{% for method in methods %}
    {% do rules.append(('var_99_' ~ method, 'var_95_' ~ method)) %}
    {% do rules.append(('es_95_' ~ method, 'var_95_' ~ method)) %}
    {% do rules.append(('es_99_' ~ method, 'var_99_' ~ method)) %}
{% endfor %}

{% for larger, smaller in rules %}
select
    *,
    '{{ larger }} >= {{ smaller }}' as broken_rule
from {{ model }}
where {{ larger }} < {{ smaller }} - {{ tolerance }} * greatest(1, abs({{ smaller }}))
{% if not loop.last %}union all{% endif %}
{% endfor %}

{% endtest %}
