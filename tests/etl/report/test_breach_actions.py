"""Actions on limit breaches against the real Postgres: the action log, raw.breach_actions, gold.fact_breach_actions
built by the real dbt (write-audit-publish of that model), the cockpit's breach rows and the alerts they hold back."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pyarrow.parquet as pq
import pytest

from etl.errors import DataNotFoundError, IncompleteInputError, ValidationError
from etl.report import alerts, breach_actions, cockpit
from etl.report.gold import GoldReader
from tests.integration.test_cockpit import _reporting, _sql
from tests.support.report_sample import AS_OF, create_gold, sample_frames

TODAY = datetime.now(UTC).date()
BREACH = {"portfolio_id": "P-CORE", "limit_type": "var", "since": "2026-01-29", "value": 120.0, "limit_value": 100.0,
          "utilisation": 1.2}


@pytest.fixture
def warehouse(pg_url, data_dir, monkeypatch):
    """Sample gold in a scratch database, P-CORE's VaR limit also breached on the 2 days before AS_OF (and once a
    week earlier, after a gap); yields the owner URL."""
    from etl.db import scratch_database

    with scratch_database(pg_url, "breach_actions") as url:
        create_gold(url, sample_frames())
        _sql(url, """insert into gold.fact_limit_breaches
                     select portfolio_id, d::date, limit_type, value * f, limit_value, metric
                     from gold.fact_limit_breaches,
                          unnest(array[%s, %s, %s]::date[], array[0.9, 0.95, 1.5]) as x(d, f)
                     where portfolio_id = 'P-CORE' and as_of_date = %s""",
             (AS_OF - timedelta(days=1), AS_OF - timedelta(days=2), AS_OF - timedelta(days=9), AS_OF))
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        yield url


def _core(url: str) -> dict:
    with GoldReader(_reporting(url)) as reader:
        found, _ = cockpit.breaches(reader, AS_OF)
    return next(b for b in found if b["portfolio_id"] == "P-CORE" and b["limit_type"] == "var")


def test_an_action_needs_a_reason_a_user_a_bounded_validity_and_a_higher_limit():
    until = TODAY + timedelta(days=7)
    act = breach_actions.make(BREACH, "acknowledge", "  hedge booked tomorrow ", "alice", until)
    assert (act.portfolio_id, act.limit_type, act.breach_began, act.by_user, act.reason, act.valid_until,
            act.utilisation_at_action) == ("P-CORE", "var", date(2026, 1, 29), "alice", "hedge booked tomorrow",
                                          until, 1.2)
    cases = [(("acknowledge", "", "alice", until), "reason: say why"),
             (("acknowledge", "x", "", until), "no user"),
             (("silence", "x", "alice", until), "action 'silence' is not one of acknowledge, raise_limit"),
             (("acknowledge", "x", "alice", TODAY - timedelta(days=1)), f"valid_until {TODAY - timedelta(days=1)}"),
             (("acknowledge", "x", "alice", TODAY + timedelta(days=91)), "must be between"),
             (("raise_limit", "x", "alice", until), "a raised limit must be above the current limit 100.0"),
             (("acknowledge", "x" * 501, "alice", until), "at most 500 characters")]
    for args, text in cases:
        with pytest.raises(ValidationError, match=text.replace("(", r"\(").replace(")", r"\)")):
            breach_actions.make(BREACH, *args)
    with pytest.raises(ValidationError, match="a raised limit must be above"):
        breach_actions.make(BREACH, "raise_limit", "x", "alice", until, new_limit_value=90.0)


def test_a_breach_carries_the_day_it_began_its_length_and_its_utilisation_each_day(warehouse):
    b = _core(warehouse)
    gold = _sql(warehouse, """select as_of_date, value / limit_value from gold.fact_limit_breaches
                              where portfolio_id = 'P-CORE' and limit_type = 'var' and as_of_date >= %s
                              order by 1""", (date(2026, 1, 29),))
    assert (b["since"], b["days"], b["action"]) == ("2026-01-29", 3, None)
    assert [(date.fromisoformat(d), u) for d, u in b["history"]] == [(d, pytest.approx(u)) for d, u in gold]
    assert [round(u / gold[-1][1], 6) for _, u in gold] == [0.95, 0.9, 1.0]


def test_an_acknowledged_breach_reaches_gold_the_page_data_and_holds_its_alert_until_it_worsens(warehouse, data_dir):
    b = _core(warehouse)
    alerts.send_alerts(AS_OF)  # alerted before anyone acts
    with pytest.raises(DataNotFoundError, match="no var breach of P-CORE that began on 2026-01-30 in "
                                                "gold.fact_limit_breaches on 2026-01-31"):
        breach_actions.act("P-CORE", "var", date(2026, 1, 30), "acknowledge", "x", "alice", TODAY, as_of=AS_OF)
    act, note = breach_actions.act("P-CORE", "var", date(2026, 1, 29), "acknowledge", "hedge booked for Monday",
                                   "alice", TODAY + timedelta(days=7), as_of=AS_OF)
    assert note is None
    log = list((data_dir / "actions" / "breach_actions").rglob("*.parquet"))
    assert len(log) == 1 and pq.read_table(log[0]).to_pylist()[0]["by_user"] == "alice"
    rows = _sql(warehouse, """select portfolio_id, limit_type, breach_began, action, by_user, reason, valid_until,
                                     utilisation_at_action, acted_at
                              from gold.fact_breach_actions""")
    assert rows == [("P-CORE", "var", date(2026, 1, 29), "acknowledge", "alice", "hedge booked for Monday",
                     TODAY + timedelta(days=7), pytest.approx(b["utilisation"]), act.acted_at)]
    shown = _core(warehouse)["action"]
    assert (shown["by_user"], shown["reason"], shown["action"]) == ("alice", "hedge booked for Monday", "acknowledge")
    assert _sql(warehouse, "select count(*) from gold.fact_limit_breaches")[0][0] == 5  # the rest of gold stays

    # the next day's run: the same breach, no worse -> held; the other breach (P-ALT) alerts as before
    _sql(warehouse, """insert into gold.fact_limit_breaches
                       select portfolio_id, as_of_date + 1, limit_type, value, limit_value, metric
                       from gold.fact_limit_breaches where as_of_date = %s""", (AS_OF,))
    nxt = AS_OF + timedelta(days=1)
    ledger = data_dir / "alerts" / "ledger" / f"as_of_date={nxt}"
    with pytest.raises(IncompleteInputError):  # gold has only the breaches of that day: sent, then refused
        alerts.send_alerts(nxt)
    assert sorted(p.name for p in ledger.glob("*.json")) == ["P-ALT__concentration.json"]
    # worse by more than ALERT_ACK_STEP (0.1 of utilisation): it alerts again
    _sql(warehouse, """update gold.fact_limit_breaches set value = value * 1.2
                       where portfolio_id = 'P-CORE' and as_of_date = %s""", (nxt,))
    with pytest.raises(IncompleteInputError):
        alerts.send_alerts(nxt)
    assert sorted(p.name for p in ledger.glob("*.json")) == ["P-ALT__concentration.json", "P-CORE__var.json"]


def _record_action_task(airflow_home):
    """The breach_action DAG's record_action task as Airflow runs it (its python callable)."""
    import os
    import sys
    from pathlib import Path

    dags = Path(__file__).resolve().parents[3] / "dags"
    mp = pytest.MonkeyPatch()
    mp.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    mp.setenv("AIRFLOW_HOME", str(airflow_home))
    mp.syspath_prepend(str(dags))
    try:
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=os.fspath(dags / "breach_action.py"))
        assert bag.import_errors == {}
        return bag.dags["breach_action"].get_task("record_action").python_callable
    finally:
        mp.undo()
        sys.modules.pop("pipeline_common", None)


class _ApprovedTask:
    """What record_action reads of its task instance: the approval's response and the run it belongs to."""

    dag_id, run_id = "breach_action", "manual__2026-02-01T09:00:00+00:00"

    def xcom_pull(self, task_ids):
        assert task_ids == "approve_action"
        return {"responded_by_user": {"id": "1", "name": "bob"}}


def test_a_retried_record_action_of_one_approval_records_one_action(warehouse, data_dir, tmp_path):
    # the worker running record_action is lost after the action was recorded and published: Airflow retries the
    # task in the same DAG run; it must not record the approved action a second time
    record_action = _record_action_task(tmp_path / "airflow_home")
    params = {"portfolio_id": "P-CORE", "limit_type": "var", "breach_began": "2026-01-29", "action": "acknowledge",
              "reason": "hedge booked for Monday", "valid_until": (TODAY + timedelta(days=7)).isoformat(),
              "new_limit_value": None}
    first = record_action(params=params, ti=_ApprovedTask())
    again = record_action(params=params, ti=_ApprovedTask())
    assert again == first
    assert len(list((data_dir / "actions" / "breach_actions").rglob("*.parquet"))) == 1
    assert _sql(warehouse, "select by_user, reason from gold.fact_breach_actions") == [("bob", "hedge booked for Monday")]
