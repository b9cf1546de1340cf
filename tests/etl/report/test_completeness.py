"""The as-of day is incomplete when a held product's price rests on a print the quality gate excluded."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pandas as pd
import pytest

from etl.db import scratch_database
from etl.errors import IncompleteInputError
from etl.report import run_report
from tests.support.report_sample import AS_OF, create_gold, sample_frames


def _flag(product: str, granularity: int, at: datetime, rule: str) -> dict:
    return {"product_id": product, "granularity": granularity, "bucket_start": at, "rule": rule,
            "evidence": f"{rule} evidence", "decision": "excluded", "flag_date": at.date(), "accepted_by": None,
            "override_reason": None}


def test_report_exits_3_naming_product_day_and_rule_when_a_held_price_rests_on_a_suspect_print(
        pg_url, data_dir, monkeypatch, tmp_path):
    frames = sample_frames(AS_OF)
    last = datetime.combine(AS_OF, time(23, 55), tzinfo=UTC)
    frames["fact_price_quality"] = pd.DataFrame([
        _flag("BTC-USD", 300, last, "jump_unconfirmed"),                       # the day's latest print: held
        _flag("ETH-USD", 86_400, datetime.combine(AS_OF, time(0), tzinfo=UTC), "spike_revert"),
        _flag("SOL-USD", 300, last - timedelta(hours=5), "spike_revert"),       # excluded, SOL's daily bar stands
        _flag("SOL-USD", 300, last - timedelta(days=2), "frozen_zero_volume"),  # the close of 01-29 rested on it
        _flag("ETH-USD", 86_400, datetime.combine(AS_OF - timedelta(days=3), time(0), tzinfo=UTC),
              "granularity_mismatch"),                                         # 01-28's bar came from finer candles
        _flag("ADA-USD", 300, last, "jump_unconfirmed"),                       # not held
    ])
    daily = frames["fact_price_daily"]
    frames["fact_price_daily"] = daily[~((daily["product_id"] == "ETH-USD")
                                         & (pd.to_datetime(daily["price_date"]).dt.date == AS_OF))]
    sql = tmp_path / "sql"
    sql.mkdir()
    with scratch_database(pg_url, "report_suspect") as url:
        create_gold(url, frames)
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        with pytest.raises(IncompleteInputError) as err:
            run_report(AS_OF, sql_dir=sql)
    text = str(err.value)
    assert "price of BTC-USD on 2026-01-31 rests on a suspect print: rule jump_unconfirmed (300s candle at " \
           "2026-01-31 23:55 UTC: jump_unconfirmed evidence); it was excluded" in text
    assert "price of ETH-USD on 2026-01-31 rests on a suspect print: rule spike_revert (86400s candle at " \
           "2026-01-31 00:00 UTC" in text
    assert "price of SOL-USD on 2026-01-29 rests on a suspect print: rule frozen_zero_volume (300s candle at " \
           "2026-01-29 23:55 UTC" in text
    assert text.count("rests on a suspect print") == 3 and "ADA-USD" not in text
    assert "accept it in price_overrides.csv (check with `python -m etl reference validate`); if not, fetch the " \
           "day's finer candles (`python -m etl ingest --products BTC-USD --granularity 300 --start 2026-01-31 " \
           "--end 2026-02-01`) or wait for the next candle; then run `python -m etl silver`, `python -m etl risk " \
           "--as-of 2026-01-31` and `python -m etl load`" in text


def test_a_warehouse_without_the_quality_table_is_incomplete(pg_url, data_dir, monkeypatch, tmp_path):
    sql = tmp_path / "sql"
    sql.mkdir()
    with scratch_database(pg_url, "report_noquality") as url:
        create_gold(url, sample_frames(AS_OF), skip=("fact_price_quality",))
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        with pytest.raises(IncompleteInputError, match="gold.fact_price_quality cannot be read: whether prices are "
                                                       "suspect is unknown"):
            run_report(AS_OF, sql_dir=sql)
