-- One row per factor per timestamp.
with factor_returns as (

    select * from {{ ref('stg_factors__factor_returns') }}

),

final as (

    select
        factor_name,
        bucket_start,
        factor_return
    from factor_returns

)

select * from final
