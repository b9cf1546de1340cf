-- One row per factor: its time coverage and its latest membership size.
with factor_returns as (

    select * from {{ ref('stg_factors__factor_returns') }}

),

factor_exposures as (

    select * from {{ ref('stg_factors__factor_exposures') }}

),

factor_membership as (

    select * from {{ ref('stg_factors__factor_membership') }}

),

factor_names as (

    select factor_name from factor_returns
    union
    select factor_name from factor_exposures
    union
    select factor_name from factor_membership

),

coverage as (

    select
        factor_name,
        min(bucket_start) as first_bucket_at,
        max(bucket_start) as last_bucket_at
    from factor_returns
    group by factor_name

),

latest_membership as (

    select
        factor_name,
        count(*) as n_members
    from factor_membership
    where membership_date = (select max(membership_date) from factor_membership)
    group by factor_name

),

final as (

    select
        factor_names.factor_name,
        coverage.first_bucket_at,
        coverage.last_bucket_at,
        coalesce(latest_membership.n_members, 0) as n_members
    from factor_names
    left join coverage
        on factor_names.factor_name = coverage.factor_name
    left join latest_membership
        on factor_names.factor_name = latest_membership.factor_name

)

select * from final
