-- One row per UTC day from the first to the last day seen in any dated fact (a gap-free calendar).
with observed_dates as (

    select * from {{ ref('int_observed_dates') }}

),

bounds as (

    select
        min(observed_date) as first_day,
        max(observed_date) as last_day
    from observed_dates

),

spine as (

    select cast(day as date) as date_day
    from bounds
    cross join lateral generate_series(bounds.first_day, bounds.last_day, interval '1 day') as day
    where bounds.first_day is not null

),

final as (

    select
        date_day,
        cast(extract(year from date_day) as integer) as year,
        cast(extract(quarter from date_day) as integer) as quarter,
        cast(extract(month from date_day) as integer) as month,
        cast(extract(day from date_day) as integer) as day_of_month,
        cast(extract(isodow from date_day) as integer) as day_of_week,
        cast(extract(week from date_day) as integer) as iso_week,
        cast(date_trunc('month', date_day) as date) as month_start,
        date_day = cast(date_trunc('month', date_day) + interval '1 month - 1 day' as date) as is_month_end,
        extract(isodow from date_day) in (6, 7) as is_weekend
    from spine

)

select * from final
