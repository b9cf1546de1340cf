"""Progress of long fetches in task logs (etl.orchestration.tasks.FetchProgress, bronze.ingest's `on_page` hook)."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta

from etl.orchestration import tasks

LINE = re.compile(r"fetch (?P<label>\S+ g=\d+): (?P<done>\d+)/(?P<total>\d+) pages \((?P<pct>\d+)%\), "
                  r"(?P<candles>[\d,]+) candles, (?P<rate>[\d.]+) pages/s, (?P<tail>done|ETA \S+)$")


def _progress_lines(caplog) -> list[re.Match]:
    return [m for r in caplog.records if r.name == "etl.orchestration.tasks" and (m := LINE.match(r.getMessage()))]


def test_a_real_backfill_task_logs_progress_at_a_steady_cadence(make_simulator, data_dir, monkeypatch, caplog):
    sim = make_simulator(latency_ms=40, rate_limit_rps=1000.0, burst=1000)
    monkeypatch.setenv("COINBASE_API_URL", sim.url)
    monkeypatch.setenv("PIPELINE_SOURCE", "simulator")
    monkeypatch.setenv("PIPELINE_MAX_WORKERS", "1")  # one page at a time: ~40 ms each
    monkeypatch.setenv("PIPELINE_PROGRESS_INTERVAL_S", "0.15")
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    start = end - timedelta(days=3)  # 3 x 1440 one-minute candles = 15 pages of 300
    with caplog.at_level(logging.INFO, logger="etl.orchestration.tasks"):
        out = tasks.fetch_candles("BTC-USD", start, end, 60)
    lines = _progress_lines(caplog)
    assert out["pages"] == 15 and out["candles"] == 3 * 1440
    assert 3 <= len(lines) < 15, [m.group(0) for m in lines]  # a steady cadence, not one line per page
    done = [int(m["done"]) for m in lines]
    assert done[0] == 1 and done[-1] == 15 and done == sorted(set(done))
    assert {m["total"] for m in lines} == {"15"} and {m["label"] for m in lines} == {"BTC-USD g=60"}
    assert all(m["tail"].startswith("ETA ") for m in lines[:-1]) and lines[-1]["tail"] == "done"
    assert int(lines[-1]["candles"].replace(",", "")) == 3 * 1440
    assert all(float(m["rate"]) > 0 for m in lines)


def test_cadence_rate_and_eta_on_a_known_clock(caplog):
    t = [0.0]
    progress = tasks.FetchProgress("ETH-USD g=60", interval_s=10.0, clock=lambda: t[0])
    with caplog.at_level(logging.INFO, logger="etl.orchestration.tasks"):
        for page in range(1, 101):  # one page a second, 300 candles each
            t[0] = float(page)
            progress(page, 100, 300)
    lines = _progress_lines(caplog)
    assert [int(m["done"]) for m in lines] == [1, 11, 21, 31, 41, 51, 61, 71, 81, 91, 100]
    assert lines[1].group(0) == "fetch ETH-USD g=60: 11/100 pages (11%), 3,300 candles, 1.0 pages/s, ETA 1m29s"
    assert lines[-1]["tail"] == "done" and lines[-1]["candles"] == "30,000"
