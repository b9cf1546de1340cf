"""The event trigger behind the `bronze/trades` Asset's watcher (dags/pipeline_common.py: BRONZE_TRADES).

The collector runs outside Airflow, so nothing inside Airflow knows when it commits. This trigger (run by the
Airflow triggerer, an `AssetWatcher`) polls today's and yesterday's bronze trade partitions every `poll_s`
seconds and fires one event per poll that found newly committed micro-batches (the batch ids are sortable: the
newest id seen is the watermark). A DAG with `schedule=[BRONZE_TRADES]` then runs on fresh trades.
Imports Airflow: only the triggerer and the DAG files import this module.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from airflow.triggers.base import BaseEventTrigger, TriggerEvent


def newest_batch(data_dir: str | None = None) -> tuple[str, int]:
    """(newest committed batch id, files) among bronze trade files of the last two UTC days ("" when none)."""
    from etl.lake import Lake
    from etl.settings import get_settings
    from etl.storage import Store, get_store
    from etl.stream.sinks import TRADES_DIR

    store = Store.from_uri(data_dir) if data_dir else get_store(get_settings())
    today = datetime.now(UTC).date()
    days = {f"date={d.isoformat()}" for d in (today, today - timedelta(days=1))}
    names = [f for f in Lake.of(store).files(TRADES_DIR) or [] if f.split("/")[-2] in days]
    batch_ids = [n.rsplit("/", 1)[-1].removesuffix(".parquet") for n in names]
    return (max(batch_ids) if batch_ids else ""), len(batch_ids)


class FreshTradesTrigger(BaseEventTrigger):
    """Fires when the collector has committed trades since the last poll."""

    def __init__(self, poll_s: float = 30.0, data_dir: str | None = None):
        super().__init__()
        self.poll_s, self.data_dir = poll_s, data_dir

    def serialize(self) -> tuple[str, dict]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {"poll_s": self.poll_s,
                                                                      "data_dir": self.data_dir}

    async def run(self):
        seen, _ = await asyncio.to_thread(newest_batch, self.data_dir)
        while True:
            await asyncio.sleep(self.poll_s)
            newest, files = await asyncio.to_thread(newest_batch, self.data_dir)
            if newest > seen:
                yield TriggerEvent({"newest_batch_id": newest, "previous_batch_id": seen, "files": files})
                seen = newest
