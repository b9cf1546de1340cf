-- One row per product per factor per day (bucket_start = the day's last timestamp): rolling OLS exposures.
with factor_exposures as (

    select * from {{ ref('stg_factors__factor_exposures') }}

),

final as (

    select
        product_id,
        factor_name,
        bucket_start,
        beta,
        r_squared,
        r_squared_adj,
        n_obs,
        alpha,
        rank_deficient
    from factor_exposures

)

select * from final
