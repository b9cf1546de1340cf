with source as (

    select * from {{ source('risk', 'risk_contributions') }}

),

renamed as (

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
        currency,
        loaded_at
    from source

)

select * from renamed
