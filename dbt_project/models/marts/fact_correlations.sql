-- One row per pair of products per as-of day: correlation of daily returns over the risk lookback.
with correlations as (

    select * from {{ ref('stg_risk__correlations') }}

),

final as (

    select
        product_id_a,
        product_id_b,
        as_of_date,
        correlation,
        n_obs,
        return_currency
    from correlations

)

select * from final
