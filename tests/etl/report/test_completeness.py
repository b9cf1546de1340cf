"""etl/report/completeness.py, the "priced" check: a holding valued at a close from before the as-of day makes the
day incomplete (report and alerts exit 3, naming the product, its last bar and the portfolios) unless the
instrument master declares the product delisted; then the day is complete and every page flags it STALE. The
cockpit's summary says the same. Against the real Postgres with the report's sample gold, compared with the clean
sample. And the "suspect" check: a held product's price resting on a print the quality gate excluded."""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta

import pandas as pd
import pytest

from etl.db import scratch_database
from etl.errors import IncompleteInputError
from etl.report import cockpit, completeness, reports_dir, run_report
from etl.report.gold import GoldReader
from etl.settings import get_settings
from etl.warehouse import reporting_url
from tests.support.report_sample import AS_OF, book_switched_from_btc_to_usd, create_gold, sample_frames

LAST_BAR = AS_OF - timedelta(days=7)


def _stale_sol(delisted: bool):
    """The sample gold with SOL-USD's daily bars stopping 7 days before AS_OF: its positions of AS_OF keep the
    close of LAST_BAR, as the risk run values them."""
    frames = sample_frames(AS_OF)
    pos = frames["fact_positions"]
    sol = (pos["product_id"] == "SOL-USD") & (pos["as_of_date"] == AS_OF)
    pos.loc[sol, "price_date"] = LAST_BAR
    pos.loc[sol, "is_stale"] = True
    pos.loc[sol, "is_delisted"] = delisted
    return frames


@pytest.fixture
def sql_dir(tmp_path):
    d = tmp_path / "sql"
    d.mkdir()
    (d / "pnl.sql").write_text("select portfolio_id, daily_pnl from gold.fact_pnl_daily where as_of_date = :'as_of'\n")
    return d


def _refused(pg_url, monkeypatch, frames: dict, db: str, sql_dir, **gold) -> str:
    """The text of the report's refusal (IncompleteInputError, exit 3) over gold built from `frames`."""
    with scratch_database(pg_url, db) as url:
        create_gold(url, frames, **gold)
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        with pytest.raises(IncompleteInputError) as err:
            run_report(AS_OF, sql_dir=sql_dir)
    return str(err.value)


def _complete(pg_url, monkeypatch, frames: dict, db: str, sql_dir):
    """(the report's path, the cockpit's summary) of a complete day (exit 0) over gold built from `frames`."""
    with scratch_database(pg_url, db) as url:
        create_gold(url, frames)
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        path = run_report(AS_OF, sql_dir=sql_dir)
        with GoldReader(reporting_url(get_settings())) as reader:
            return path, cockpit.summary(reader, AS_OF)


def test_the_clean_sample_is_complete(sample_gold_url, data_dir, monkeypatch, sql_dir):
    monkeypatch.setenv("PIPELINE_DATABASE_URL", sample_gold_url)
    with GoldReader(reporting_url(get_settings())) as reader:
        assert completeness.stale_holdings(reader, AS_OF) == ([], [])
        assert cockpit.summary(reader, AS_OF)["status"] == "complete"
    page = run_report(AS_OF, sql_dir=sql_dir).read_text()
    assert 'id="incomplete"' not in page and 'id="stale"' not in page


def test_an_uncomputable_var_is_not_a_missing_row_in_the_cockpit(pg_url, data_dir, monkeypatch, sql_dir):
    """P-ALT's VaR is uncomputable (NULL: too short a history): its risk row is there, so the day is complete in
    the report and in the cockpit alike; the cockpit said "no row for P-ALT" and incomplete."""
    frames = sample_frames(AS_OF)
    risk = frames["fact_risk_metrics"]
    risk.loc[risk["portfolio_id"] == "P-ALT", [c for c in risk.columns if c.startswith(("var_", "es_"))]] = None
    with scratch_database(pg_url, "cockpit_uncomputable") as url:
        create_gold(url, frames)
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        run_report(AS_OF, sql_dir=sql_dir)
        with GoldReader(reporting_url(get_settings())) as reader:
            summary = cockpit.summary(reader, AS_OF)
    assert (summary["status"], summary["missing"]) == ("complete", [])


def test_a_listed_product_without_a_bar_on_the_as_of_day_makes_the_day_incomplete(pg_url, data_dir, monkeypatch,
                                                                                 sql_dir):
    cause = (f"SOL-USD has no daily bar on {AS_OF}, or the <CCY>-USD pair converting it has none (last bar "
             f"{LAST_BAR}), held by portfolio(s) P-ALT, P-CORE: ingest the missing daily candles (`python -m etl "
             "ingest --products SOL-USD --granularity 86400`, or the pair's, then `silver`, "
             f"`risk --as-of {AS_OF}`, `load`), or if it was delisted set delisted_on in instruments.csv (a delisting "
             "excuses a holding only when its last bar is of its delisted_on day or the day before, and the <CCY>-USD "
             "pairs converting it have a bar on the day)")
    with scratch_database(pg_url, "completeness_stale") as url:
        create_gold(url, _stale_sol(delisted=False))
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        with pytest.raises(IncompleteInputError) as err:
            run_report(AS_OF, sql_dir=sql_dir)
        with GoldReader(reporting_url(get_settings())) as reader:
            summary = cockpit.summary(reader, AS_OF)
    assert str(err.value).endswith("INCOMPLETE (" + str(reports_dir(get_settings()) / AS_OF.isoformat()
                                                        / "report.html") + " says so): " + cause)
    assert (summary["status"], summary["missing"], summary["stale"]) == ("incomplete", [cause], [])
    page = (reports_dir(get_settings()) / AS_OF.isoformat() / "report.html").read_text()
    assert 'id="incomplete"' in page and "SOL-USD has no daily bar on" in page


def test_a_delisted_holding_is_valued_at_its_last_price_and_flagged_stale_on_every_page(pg_url, data_dir,
                                                                                     monkeypatch, sql_dir):
    notice = f"SOL-USD is delisted: valued at its last close, of {LAST_BAR} (stale), in portfolio(s) P-ALT, P-CORE"
    with scratch_database(pg_url, "completeness_delisted") as url:
        create_gold(url, _stale_sol(delisted=True))
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        path = run_report(AS_OF, sql_dir=sql_dir)                             # complete: no exception, exit 0
        with GoldReader(reporting_url(get_settings())) as reader:
            summary = cockpit.summary(reader, AS_OF)
            detail = cockpit.portfolio(reader, "P-ALT", AS_OF)
    assert (summary["status"], summary["missing"], summary["stale"]) == ("complete", [], [notice])
    pages = sorted(path.parent.glob("*.html"))
    assert len(pages) >= 3                                                    # report, portfolios, detail pages
    for page in pages:
        text = page.read_text()
        assert 'id="stale"' in text and notice in text and 'id="incomplete"' not in text, page.name
    alt = (path.parent / "portfolio-p-alt.html").read_text()             # the positions table: the close's day
    assert re.search(rf"<td>SOL-USD</td>.*?<td>{LAST_BAR} \(stale\)</td>", alt, re.S)
    assert re.search(rf"<td>ETH-USD</td>(?:(?!</tr>).)*<td>{AS_OF}</td>", alt, re.S)
    sol = next(p for p in detail["positions"] if p["product_id"] == "SOL-USD")
    assert (sol["price_date"], sol["is_stale"]) == (LAST_BAR.isoformat(), True)


def test_the_sql_reports_markdown_of_a_day_with_a_stale_holding_says_stale_naming_it(pg_url, data_dir, monkeypatch,
                                                                                     sql_dir):
    """SOL-USD is delisted and valued at its last close: every HTML page carries the STALE notice, but
    sql_reports.md (linked from the report, read on its own) showed the day's figures with no word of it. It now
    opens with the same STALE line (and no INCOMPLETE one: the day is complete)."""
    notice = f"SOL-USD is delisted: valued at its last close, of {LAST_BAR} (stale), in portfolio(s) P-ALT, P-CORE"
    with scratch_database(pg_url, "completeness_delisted_md") as url:
        create_gold(url, _stale_sol(delisted=True))
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        path = run_report(AS_OF, sql_dir=sql_dir)                             # complete: no exception, exit 0
    head = (path.parent / "sql_reports.md").read_text().split("\n## ", 1)[0]
    assert "**STALE**" in head and notice in head and "INCOMPLETE" not in head


def _flag(product: str, granularity: int, at: datetime, rule: str) -> dict:
    return {"product_id": product, "granularity": granularity, "bucket_start": at, "rule": rule,
            "evidence": f"{rule} evidence", "decision": "excluded", "flag_date": at.date(), "accepted_by": None,
            "override_reason": None}


def _drop_daily_bar(frames: dict, product: str, day) -> None:
    """gold without `product`'s daily bar of `day` (silver built none: its prints were excluded)."""
    daily = frames["fact_price_daily"]
    frames["fact_price_daily"] = daily[~((daily["product_id"] == product)
                                         & (pd.to_datetime(daily["price_date"]).dt.date == day))]


def test_report_exits_3_naming_product_day_and_rule_when_a_held_price_rests_on_a_suspect_print(
        pg_url, data_dir, monkeypatch, sql_dir):
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
    _drop_daily_bar(frames, "ETH-USD", AS_OF)
    text = _refused(pg_url, monkeypatch, frames, "report_suspect", sql_dir)
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


def test_a_daily_candle_contradicting_minutes_that_stop_early_names_the_minutes_to_fetch_again(
        pg_url, data_dir, monkeypatch, sql_dir):
    """Silver builds no bar for a day whose daily candle contradicts 1-minute candles stopping before the day's end
    (an intraday outage): the report names the excluded daily candle and the fetch that settles it, the day's
    1-minute candles again (5-minute ones would not: the bar is built from the finest candles present)."""
    frames = sample_frames(AS_OF)
    frames["fact_price_quality"] = pd.DataFrame([
        _flag("ETH-USD", 86_400, datetime.combine(AS_OF, time(0), tzinfo=UTC), "granularity_mismatch")])
    _drop_daily_bar(frames, "ETH-USD", AS_OF)
    text = _refused(pg_url, monkeypatch, frames, "report_disputed", sql_dir)
    assert "price of ETH-USD on 2026-01-31 rests on a suspect print: rule granularity_mismatch (86400s candle at " \
           "2026-01-31 00:00 UTC" in text
    assert "fetch the day's finer candles (`python -m etl ingest --products ETH-USD --granularity 60 --start " \
           "2026-01-31 --end 2026-02-01`)" in text


def test_a_warehouse_without_the_quality_table_is_incomplete(pg_url, data_dir, monkeypatch, sql_dir):
    text = _refused(pg_url, monkeypatch, sample_frames(AS_OF), "report_noquality", sql_dir,
                    skip=("fact_price_quality",))
    assert "gold.fact_price_quality cannot be read: whether prices are suspect is unknown" in text


def test_the_report_first_screen_never_says_complete_on_a_day_the_check_finds_incomplete(pg_url, data_dir,
                                                                                       monkeypatch, sql_dir):
    """The status line and the breach KPI of report.html say what completeness.check says: a stale listed holding
    makes the day INCOMPLETE there too, not "complete" and "no limit breaches" under the red banner."""
    with scratch_database(pg_url, "completeness_first_screen") as url:
        create_gold(url, _stale_sol(delisted=False))
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        with pytest.raises(IncompleteInputError):
            run_report(AS_OF, sql_dir=sql_dir)
    page = (reports_dir(get_settings()) / AS_OF.isoformat() / "report.html").read_text()
    status = re.search(r'<div class="status (\w+)" id="as-of-status">([^<]*)</div>', page)
    assert status is not None and status.group(1) == "incomplete", status and status.group(0)
    assert "SOL-USD has no daily bar on" in status.group(2)
    assert f"no limit breaches on {AS_OF}" not in page


def test_the_cockpit_portfolio_page_of_an_incomplete_day_says_incomplete_and_stale(pg_url, data_dir, monkeypatch,
                                                                                     sql_dir):
    """SOL-USD, held by both books, has no bar on AS_OF: the report exits 3, its every page (the book's detail page
    too) opens INCOMPLETE, and the cockpit's Firm page says incomplete. The cockpit's portfolio page showed the
    book's VaR and value of that day with no status at all; it now carries the day's status line (INCOMPLETE,
    naming what), as the Firm page, and a delisted holding's STALE notice."""
    import sys

    from etl.settings import PROJECT_ROOT

    sys.path.insert(0, str(PROJECT_ROOT / "plugins"))
    from risk_cockpit import pages  # noqa: PLC0415

    with scratch_database(pg_url, "cockpit_portfolio_status") as url:
        create_gold(url, _stale_sol(delisted=False))
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        with GoldReader(reporting_url(get_settings())) as reader:
            firm = cockpit.firm(reader, AS_OF)
            mine = cockpit.portfolio(reader, "P-ALT", AS_OF)
        delisted = _stale_sol(delisted=True)
    assert firm["status"] == "incomplete"
    assert (mine["status"], mine["missing"]) == ("incomplete", firm["missing"])
    page = pages.portfolio(mine, ["P-ALT", "P-CORE"])
    status = re.search(r'<div class="status (\w+)" id="status">([^<]*)</div>', page)
    assert status is not None and status.group(1) == "incomplete" and "SOL-USD has no daily bar on" in status.group(2)
    with scratch_database(pg_url, "cockpit_portfolio_stale") as url:
        create_gold(url, delisted)
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        with GoldReader(reporting_url(get_settings())) as reader:
            mine = cockpit.portfolio(reader, "P-ALT", AS_OF)
    assert (mine["status"], mine["stale"]) == ("complete", [f"SOL-USD is delisted: valued at its last close, of "
                                                            f"{LAST_BAR} (stale), in portfolio(s) P-ALT, P-CORE"])
    assert 'id="stale"' in pages.portfolio(mine, ["P-ALT", "P-CORE"])


def _suspect_btc() -> dict:
    frames = sample_frames(AS_OF)
    frames["fact_price_quality"] = pd.DataFrame([
        _flag("BTC-USD", 300, datetime.combine(AS_OF, time(23, 55), tzinfo=UTC), "jump_unconfirmed")])
    return frames


def test_the_cockpit_summary_is_incomplete_when_a_held_price_rests_on_a_suspect_print(pg_url, data_dir,
                                                                                     monkeypatch, sql_dir):
    """The report exits 3 over a held price resting on an excluded print: the cockpit says the same, not complete."""
    with scratch_database(pg_url, "cockpit_suspect") as url:
        create_gold(url, _suspect_btc())
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        with pytest.raises(IncompleteInputError, match="price of BTC-USD on 2026-01-31 rests on a suspect print"):
            run_report(AS_OF, sql_dir=sql_dir)
        with GoldReader(reporting_url(get_settings())) as reader:
            summary = cockpit.summary(reader, AS_OF)
    assert summary["status"] == "incomplete"
    assert any(m.startswith("price of BTC-USD on 2026-01-31 rests on a suspect print") for m in summary["missing"])


def test_the_cockpit_summary_is_incomplete_when_gold_holds_an_older_risk_run_than_the_committed_one(
        pg_url, data_dir, monkeypatch, sql_dir):
    """A newer risk run of the day is committed but not loaded: gold's figures are stale. Report and cockpit both
    say so (the report exits 3 naming both runs)."""
    import pyarrow as pa

    from etl import commits
    from etl.storage import get_store

    frames = sample_frames(AS_OF)
    frames["fact_risk_metrics"]["risk_run_id"] = "run-loaded"
    commits.publish(get_store(get_settings()), commits.risk_manifest(AS_OF), "risk",
                    {("risk_metrics", f"as_of_date={AS_OF}"): pa.table({"portfolio_id": ["P-CORE"]})},
                    run_id="run-committed")
    with scratch_database(pg_url, "cockpit_stale_run") as url:
        create_gold(url, frames)
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        with pytest.raises(IncompleteInputError, match="holds risk run.s. run-loaded but run run-committed is "
                                                       "committed"):
            run_report(AS_OF, sql_dir=sql_dir)
        with GoldReader(reporting_url(get_settings())) as reader:
            summary = cockpit.summary(reader, AS_OF)
    assert summary["status"] == "incomplete"
    assert any("run-loaded" in m and "run-committed" in m for m in summary["missing"]), summary["missing"]


def test_a_suspect_print_of_the_pair_converting_a_holding_makes_the_day_incomplete(pg_url, data_dir, monkeypatch,
                                                                                  sql_dir):
    """P-ALT is based in BTC and holds no BTC-USD: its every amount is divided by BTC-USD's close, which rests on
    an unconfirmed last print. That is a suspect price of the book as much as a held product's."""
    frames = sample_frames(AS_OF)
    frames["dim_portfolio"].loc[frames["dim_portfolio"]["portfolio_id"] == "P-ALT", "base_currency"] = "BTC"
    pos = frames["fact_positions"]
    frames["fact_positions"] = pos[pos["product_id"] != "BTC-USD"]  # P-CORE's BTC-USD sold: BTC-USD not held
    last = datetime.combine(AS_OF, time(23, 55), tzinfo=UTC)
    frames["fact_price_quality"] = pd.DataFrame([_flag("BTC-USD", 300, last, "jump_unconfirmed")])
    text = _refused(pg_url, monkeypatch, frames, "report_suspect_pair", sql_dir)
    assert "price of BTC-USD on 2026-01-31 rests on a suspect print: rule jump_unconfirmed" in text


def _sold_sol_without_a_bar_on_the_day(delisted_on=None) -> dict:
    """The sample gold where both portfolios sell their SOL-USD on AS_OF (their positions of AS_OF hold none) and
    SOL-USD has no daily bar on AS_OF: their PnL of AS_OF revalues the SOL held at the previous close at a close
    carried from the day before."""
    frames = sample_frames(AS_OF)
    pos = frames["fact_positions"]
    frames["fact_positions"] = pos[~((pos["product_id"] == "SOL-USD") & (pos["as_of_date"] == AS_OF))]
    _drop_daily_bar(frames, "SOL-USD", AS_OF)
    sym = frames["dim_symbol"]
    if delisted_on is not None:
        sym["delisted_on"] = [delisted_on if p == "SOL-USD" else None for p in sym["product_id"]]
        quality = frames["fact_price_quality"]            # and no print of its last day held out
        frames["fact_price_quality"] = quality[quality["product_id"] != "SOL-USD"]
    return frames


def test_a_product_held_at_the_previous_close_without_a_bar_on_the_day_makes_the_day_incomplete(
        pg_url, data_dir, monkeypatch, sql_dir):
    """The PnL of D is the holdings of D-1's close revalued at D's closes (docs/risk_conventions.md). A product
    sold on D is in no position row of D, so the "priced" check never looked at it: with no bar on D its PnL of D
    rested on D-1's close carried forward (0), and report and cockpit said complete. Now the day is incomplete,
    naming the product, its last bar and the portfolios whose PnL it is in (the intraday risk counts such a product
    stale too); delisted on or before D, it is not a problem."""
    cause = (f"SOL-USD, held at the close of {AS_OF - timedelta(days=1)} by portfolio(s) P-ALT, P-CORE, has no "
             f"daily bar on {AS_OF}, or the <CCY>-USD pair converting it has none (last bar "
             f"{AS_OF - timedelta(days=1)}): their PnL of {AS_OF} revalues it at an earlier close")
    text = _refused(pg_url, monkeypatch, _sold_sol_without_a_bar_on_the_day(), "completeness_sold_stale", sql_dir)
    assert cause in text
    with scratch_database(pg_url, "completeness_sold_delisted") as url:
        create_gold(url, _sold_sol_without_a_bar_on_the_day(AS_OF))
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        run_report(AS_OF, sql_dir=sql_dir)                                      # complete: exit 0


def test_a_suspect_print_of_a_product_sold_on_the_day_makes_the_day_incomplete(pg_url, data_dir, monkeypatch,
                                                                                sql_dir):
    """Both portfolios sell their SOL-USD on AS_OF; its close of AS_OF (which their PnL of AS_OF revalues the SOL
    held at the previous close at) rests on an unconfirmed last print. The suspect check read only the products of
    the day's position rows: the day was complete. Now it is incomplete, naming the print."""
    frames = sample_frames(AS_OF)
    pos = frames["fact_positions"]
    frames["fact_positions"] = pos[~((pos["product_id"] == "SOL-USD") & (pos["as_of_date"] == AS_OF))]
    frames["fact_price_quality"] = pd.DataFrame([
        _flag("SOL-USD", 300, datetime.combine(AS_OF, time(23, 55), tzinfo=UTC), "jump_unconfirmed")])
    text = _refused(pg_url, monkeypatch, frames, "report_suspect_sold", sql_dir)
    assert "price of SOL-USD on 2026-01-31 rests on a suspect print: rule jump_unconfirmed (300s candle at " \
           "2026-01-31 23:55 UTC" in text


def test_a_var_resting_on_carried_forward_closes_is_a_stale_warning_on_every_page_and_in_the_cockpit(
        pg_url, data_dir, monkeypatch, sql_dir):
    """SOL-USD had no daily bar on 3 days of the VaR window (a halt: its closes carried forward, zero returns):
    the day stays complete (a genuine halt has no fix), but P-ALT's VaR is not shown as a confident figure: the
    report's pages and the cockpit warn, naming the portfolio, the product and the days."""
    frames = sample_frames(AS_OF)
    pos, risk = frames["fact_positions"], frames["fact_risk_metrics"]
    pos.loc[(pos["product_id"] == "SOL-USD") & (pos["as_of_date"] == AS_OF), "carried_days"] = 3
    for pid in ("P-ALT", "P-CORE"):
        held = set(pos.loc[(pos["portfolio_id"] == pid) & (pos["as_of_date"] == AS_OF), "product_id"])
        risk.loc[(risk["portfolio_id"] == pid) & (risk["as_of_date"] == AS_OF), "carried_days"] = \
            3 if "SOL-USD" in held else 0
    lookback = int(risk["lookback_days"].iloc[0])
    path, summary = _complete(pg_url, monkeypatch, frames, "completeness_carried", sql_dir)
    holders = sorted(set(pos.loc[(pos["product_id"] == "SOL-USD") & (pos["as_of_date"] == AS_OF), "portfolio_id"]))
    notices = [f"VaR of {pid} rests on closes carried forward (no daily bar, or a stuck close) on 3 of the "
               f"{lookback} days of its "
               f"window: SOL-USD (3 days); above RISK_MAX_CARRIED_DAYS its VaR/ES are NULL" for pid in holders]
    assert (summary["status"], summary["stale"]) == ("complete", notices)
    for page in sorted(path.parent.glob("*.html")):
        text = page.read_text()
        assert 'id="stale"' in text and all(n in text for n in notices), page.name


def test_a_lookback_cut_short_by_a_newly_listed_product_is_named_on_every_page_and_in_the_cockpit(
        pg_url, data_dir, monkeypatch, sql_dir):
    """The risk run's history started at a product's first daily close (a new listing), leaving fewer returns than
    the configured lookback for every book: the day is complete, but the pages and the cockpit say so, naming the
    product and the lookback left."""
    frames = sample_frames(AS_OF)
    risk = frames["fact_risk_metrics"]
    late = f"SOL-USD (first daily close {AS_OF - timedelta(days=30)})"
    risk.loc[risk["as_of_date"] == AS_OF, "lookback_limited_by"] = late
    lookback = int(risk["lookback_days"].iloc[0])
    path, summary = _complete(pg_url, monkeypatch, frames, "completeness_short_history", sql_dir)
    notice = (f"VaR of every portfolio rests on {lookback} daily returns, fewer than RISK_VAR_LOOKBACK_DAYS: the "
              f"price history starts at {late}")
    assert (summary["status"], summary["stale"]) == ("complete", [notice])
    for page in sorted(path.parent.glob("*.html")):
        text = page.read_text()
        assert 'id="stale"' in text and notice in text, page.name


def test_a_retired_book_is_not_missing_today_but_a_day_it_was_valued_still_lists_it(pg_url, data_dir, monkeypatch,
                                                                                   sql_dir):
    """A desk closed P-OLD: gold.dim_portfolio keeps it (is_current false) for the history its facts hold, up to
    the day before AS_OF. On AS_OF the report, the cockpit and the HTML pages are complete and list the current
    books only (they said "no row for P-OLD", exit 3, for good); the day before still lists P-OLD with its numbers."""
    frames = sample_frames(AS_OF)
    frames["dim_portfolio"] = pd.concat([frames["dim_portfolio"].assign(is_current=True), frames["dim_portfolio"]
                                         .query("portfolio_id == 'P-ALT'")
                                         .assign(portfolio_id="P-OLD", name="Closed desk", is_current=False)],
                                        ignore_index=True)
    for table in ("fact_portfolio_valuation", "fact_pnl_daily", "fact_risk_metrics"):
        df = frames[table]
        old = df[(df["portfolio_id"] == "P-ALT") & (pd.to_datetime(df["as_of_date"]).dt.date < AS_OF)]
        frames[table] = pd.concat([df, old.assign(portfolio_id="P-OLD")], ignore_index=True)
    with scratch_database(pg_url, "completeness_retired") as url:
        create_gold(url, frames)
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        path = run_report(AS_OF, sql_dir=sql_dir)                             # complete: no exception, exit 0
        with GoldReader(reporting_url(get_settings())) as reader:
            today = cockpit.summary(reader, AS_OF)
            before = cockpit.summary(reader, AS_OF - timedelta(days=1))
    assert (today["status"], today["missing"]) == ("complete", [])
    assert [p["portfolio_id"] for p in today["portfolios"]] == ["P-ALT", "P-CORE"]
    assert [p["portfolio_id"] for p in before["portfolios"]] == ["P-ALT", "P-CORE", "P-OLD"]
    assert next(p for p in before["portfolios"] if p["portfolio_id"] == "P-OLD")["market_value"] is not None
    assert "P-OLD" not in path.read_text() and not (path.parent / "portfolio-p-old.html").exists()


def test_a_past_day_of_a_book_whose_currency_changed_since_keeps_the_currency_its_figures_are_in(
        pg_url, data_dir, monkeypatch, sql_dir):
    """The cockpit labelled a past day's figures with dim_portfolio's base_currency (portfolios.csv as it is now):
    P-ALT's BTC figures of AS_OF read as USD, its VaR breach of 0.00123456 BTC as an amount in USD, and its BTC
    book value and PnL were added to P-CORE's USD ones in one total. Each figure's currency is that of its row."""
    frames = book_switched_from_btc_to_usd()
    frames["dim_portfolio"]["base_currency"] = "USD"
    nine = datetime.combine(AS_OF, time(9, 0), tzinfo=UTC)
    frames["fact_intraday_risk"] = pd.DataFrame({
        "portfolio_id": ["P-CORE", "P-ALT"], "bucket_start": nine, "market_value": [100_000.0, 2.5],
        "intraday_pnl": [1_500.0, 0.01], "gross_exposure": [120_000.0, 2.5], "max_price_age_s": 0.0,
        "stale_product_ids": "", "base_currency": ["USD", "BTC"]})
    with scratch_database(pg_url, "completeness_ccy_changed") as url:
        create_gold(url, frames)
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        with GoldReader(reporting_url(get_settings())) as reader:
            firm = cockpit.firm(reader, AS_OF)
    rows = {p["portfolio_id"]: p for p in firm["portfolios"]}
    assert (rows["P-ALT"]["base_currency"], rows["P-CORE"]["base_currency"]) == ("BTC", "USD")
    got = {(b["portfolio_id"], b["limit_type"]): b["currency"] for b in firm["breaches"]}
    assert got[("P-ALT", "var")] == "BTC" and got[("P-CORE", "var")] == "USD"
    totals = {t["currency"]: t for t in firm["totals"]}
    assert set(totals) == {"BTC", "USD"}
    val = frames["fact_portfolio_valuation"]
    day = val[val["as_of_date"] == AS_OF].set_index("portfolio_id")["market_value"]
    assert totals["BTC"]["market_value"] == pytest.approx(day["P-ALT"])
    assert totals["USD"]["market_value"] == pytest.approx(day["P-CORE"])
    intra = [(r["currency"], r["intraday_pnl"]) for r in firm["intraday"]["rows"]]
    assert intra == [("BTC", 0.01), ("USD", 1_500.0)]       # one chart per currency: never 1,500.01 USD


def test_a_suspect_print_of_the_pair_converting_a_book_that_was_btc_then_makes_that_day_incomplete(
        pg_url, monkeypatch, sql_dir):
    """P-ALT was a BTC book on AS_OF (its positions of the day carry base_currency BTC: every amount of it divided by
    BTC-USD's close) and is a USD book now (dim_portfolio). BTC-USD's close of AS_OF rests on an unconfirmed last
    print. The check took the book's currency from dim_portfolio (today's USD) and called the day complete: a green
    report over BTC figures resting on a suspect print. It takes the currency of the day's position rows."""
    frames = book_switched_from_btc_to_usd()
    frames["dim_portfolio"]["base_currency"] = "USD"
    pos = frames["fact_positions"]
    frames["fact_positions"] = pos[pos["product_id"] != "BTC-USD"]  # P-CORE's BTC-USD sold: BTC-USD not held
    last = datetime.combine(AS_OF, time(23, 55), tzinfo=UTC)
    frames["fact_price_quality"] = pd.DataFrame([_flag("BTC-USD", 300, last, "jump_unconfirmed")])
    text = _refused(pg_url, monkeypatch, frames, "report_suspect_pair_was_btc", sql_dir)
    assert "price of BTC-USD on 2026-01-31 rests on a suspect print: rule jump_unconfirmed" in text
