-- raw.factor_membership as declared in etl/warehouse/tables.yml; `date` is named membership_date here.
{{ staged('factors', 'factor_membership', {'date': 'date as membership_date'}) }}
