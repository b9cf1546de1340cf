-- One row per scope (portfolio | firm) per portfolio per product per as-of day: euler risk contributions.
with risk_contributions as (

    select * from {{ ref('stg_risk__risk_contributions') }}

),

final as (

    select
        scope,
        portfolio_id,
        product_id,
        as_of_date,
        component_var_95_param,
        component_var_99_param,
        component_es_95_hist,
        component_es_99_hist,
        marginal_var_99_param,
        marginal_var_95_param,
        exposure,
        currency
    from risk_contributions

)

select * from final
