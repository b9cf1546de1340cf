-- One row per portfolio per 5-minute bucket: the intraday revaluation. Incremental (delete+insert on the key):
-- each intraday run merges the raw rows loaded since the last build, so a rerun of an interval replaces its rows.
{{
    config(
        materialized='incremental',
        unique_key=['portfolio_id', 'bucket_start'],
        incremental_strategy='delete+insert',
        on_schema_change='append_new_columns',
    )
}}

with intraday_risk as (

    select * from {{ ref('stg_risk__intraday_risk') }}

),

final as (

    select
        portfolio_id,
        bucket_start,
        as_of_date,
        market_value,
        intraday_pnl,
        gross_exposure,
        net_exposure,
        long_exposure,
        short_exposure,
        concentration_pct,
        var_95,
        var_99,
        es_95,
        es_99,
        var_95_param,
        var_99_param,
        es_95_param,
        es_99_param,
        var_95_mc,
        var_99_mc,
        es_95_mc,
        es_99_mc,
        drawdown as drawdown_from_peak,
        stale_products,
        stale_products > 0 as has_stale_prices,
        stale_product_ids,
        max_price_age_s,
        prev_close_date,
        scenario_as_of_date,
        is_scenario_stale,
        base_currency,
        loaded_at
    from intraday_risk
    {% if is_incremental() %}
    where loaded_at > (select coalesce(max(loaded_at), '-infinity'::timestamptz) from {{ this }})
    {% endif %}

)

select * from final
