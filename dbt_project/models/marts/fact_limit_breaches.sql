-- One row per portfolio per day per limit type per metric that breached its limit: exceeded it, or could not be
-- computed (breach_kind 'uncomputable', value NULL: a NaN/inf metric never passes a limit).
with limit_breaches as (

    select * from {{ ref('stg_risk__limit_breaches') }}

),

final as (

    select
        portfolio_id,
        as_of_date,
        limit_type,
        metric,
        value,
        limit_value,
        value / nullif(limit_value, 0) as utilisation,
        base_currency,
        breach_kind
    from limit_breaches

)

select * from final
